"""Signed callbacks: a POST to a job's (or pipeline's) ``callback_url`` when it ends.

Body: JSON ``{id, type: "job"|"pipeline", kind, status, result | error, finished_at, …}``. Headers:
``X-Layercut-Timestamp: <unix seconds>`` and ``X-Layercut-Signature: sha256=<hex>`` where hex is
HMAC-SHA256 with key ``settings.callback_secret`` over ``f"{id}.{timestamp}.{body}"`` (body as sent).
Receivers check it with ``verify_signature``. Delivery is retried with exponential backoff in a
background thread; a receiver that never answers is logged, and never fails the job.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from layercut.contracts.callback_urls import AllowList, CallbackUrlRefused, check_address, check_callback_url
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.models import Job, Pipeline

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Layercut-Timestamp"
SIGNATURE_HEADER = "X-Layercut-Signature"
BACKOFF_SECONDS = 0.5
"""First retry delay; it doubles after each failed attempt (capped at MAX_BACKOFF_SECONDS)."""
MAX_BACKOFF_SECONDS = 60.0

_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="layercut-callback")


def sign(secret: str, object_id: str, timestamp: str, body: bytes | str) -> str:
    """The signature header value: ``sha256=`` + hex HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    text = body.decode() if isinstance(body, bytes) else body
    digest = hmac.new(secret.encode(), f"{object_id}.{timestamp}.{text}".encode(), hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str,
    body: bytes | str,
    timestamp: str,
    signature: str,
    object_id: str | None = None,
    tolerance_seconds: float | None = 300,
    now: float | None = None,
) -> bool:
    """Check a received callback: signature matches and the timestamp is recent (replay protection).

    ``object_id`` defaults to the ``id`` field of the JSON body.
    """
    try:
        if object_id is None:
            object_id = str(json.loads(body)["id"])
        if tolerance_seconds is not None and abs((now or time.time()) - float(timestamp)) > tolerance_seconds:
            return False
    except (ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(sign(secret, object_id, timestamp, body), signature or "")


@dataclass(frozen=True)
class Target:
    """Where one delivery goes: the URL to connect to (the checked address in place of the name), the Host header
    and the TLS server name to present (the URL's own name)."""

    url: str
    host_header: str | None = None
    server_name: str | None = None


def checked_target(url: str, allowed: AllowList) -> Target:
    """The callback URL checked again at delivery (``layercut.contracts.callback_urls``): its name is resolved and
    every address it has must be public or allow-listed (a name that resolves to this machine or a private network
    is refused), and the connection then goes to the address checked, so a second lookup cannot answer another
    one. An allow-listed name is used as it is. Raises ``CallbackUrlRefused``."""
    import httpx

    parts = check_callback_url(url, allowed)
    host = (parts.hostname or "").rstrip(".")
    if allowed.allows_name(host):
        return Target(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise CallbackUrlRefused(f"the callback host {host!r} cannot be resolved: {exc}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise CallbackUrlRefused(f"the callback host {host!r} has no address")
    for address in addresses:
        check_address(address, allowed)
    pinned = httpx.URL(url).copy_with(host=str(addresses[0]))
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return Target(str(pinned), host_header=netloc, server_name=host if parts.scheme.lower() == "https" else None)


def deliver(
    url: str,
    payload: dict[str, Any],
    secret: str,
    attempts: int = 5,
    timeout: float = 10.0,
    backoff: float = BACKOFF_SECONDS,
    allowed: AllowList | None = None,
) -> bool:
    """POST ``payload`` signed, retrying on errors and non-2xx answers; True once a 2xx came back. Before each
    attempt the URL is checked (``checked_target``; ``allowed``: the operator's allow-list, default none): a refused
    URL is given up at once. Redirects are not followed (a 3xx is a failed attempt), so a receiver cannot send the
    callback on to an address the check refuses."""
    import httpx

    allowed = allowed or AllowList()
    body = json.dumps(payload, separators=(",", ":"), default=str)
    delay = backoff
    for attempt in range(1, max(attempts, 1) + 1):
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, str(payload["id"]), timestamp, body),
            "User-Agent": "layercut-callback",
        }
        try:
            target = checked_target(url, allowed)
        except CallbackUrlRefused as exc:
            log.error("callback %s for %s refused: %s", url[:200], payload["id"], exc)
            return False
        if target.host_header:
            headers["Host"] = target.host_header
        extensions = {"sni_hostname": target.server_name} if target.server_name else {}
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False) as client:
                response = client.post(target.url, content=body.encode(), headers=headers, extensions=extensions)
            if 200 <= response.status_code < 300:
                return True
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        log.warning("callback %s for %s: attempt %d/%d failed (%s)", url, payload["id"], attempt, attempts, reason)
        if attempt < attempts:
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
    log.error("callback %s for %s given up after %d attempts", url, payload["id"], attempts)
    return False


def send(settings: Settings, url: str, payload: dict[str, Any]) -> Future:
    """Deliver in the background (so a slow receiver never holds a worker); the Future says if it arrived."""
    return _executor.submit(
        deliver,
        url,
        payload,
        settings.callback_secret,
        settings.callback_attempts,
        settings.callback_timeout_seconds,
        allowed=AllowList.parse(settings.callback_allowed_hosts.split(",")),
    )


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def job_payload(job: Job) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(job.id),
        "type": "job",
        "kind": job.kind,
        "status": job.status,
        "finished_at": _iso(job.finished_at),
        "pipeline_id": str(job.pipeline_id) if job.pipeline_id else None,
    }
    if job.status == "succeeded":
        payload["result"] = job.result
    elif job.error_code:
        payload["error"] = {"code": job.error_code, "message": job.error_message}
    return payload


def job_finished(settings: Settings, job_id: uuid.UUID) -> Future | None:
    """Send the callback of a finished job, if it has a callback_url."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id, populate_existing=True)
        if job is None or not job.callback_url:
            return None
        return send(settings, job.callback_url, job_payload(job))


def pipeline_finished(settings: Settings, pipeline_id: uuid.UUID) -> Future | None:
    """Send the callback of a finished pipeline (its steps' statuses and the failing step's error)."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        pipeline = session.get(Pipeline, pipeline_id, populate_existing=True)
        if pipeline is None or not pipeline.callback_url:
            return None
        jobs = session.scalars(select(Job).where(Job.pipeline_id == pipeline_id).order_by(Job.step)).all()
        payload: dict[str, Any] = {
            "id": str(pipeline.id),
            "type": "pipeline",
            "kind": "pipeline",
            "status": pipeline.status,
            "finished_at": _iso(pipeline.finished_at),
            "jobs": [{"id": str(j.id), "kind": j.kind, "step": j.step, "status": j.status} for j in jobs],
        }
        failed = next((j for j in jobs if j.error_code), None)
        if failed is not None:
            payload["error"] = {"code": failed.error_code, "message": failed.error_message, "job_id": str(failed.id)}
        if pipeline.status == "succeeded" and jobs:
            payload["result"] = {
                "model_ids": [j.result.get("model_id") for j in jobs if j.result and j.result.get("model_id")]
            }
        return send(settings, pipeline.callback_url, payload)
