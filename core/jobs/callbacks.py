"""Signed callbacks: a POST to a job's (or pipeline's) ``callback_url`` when it ends.

Body: JSON ``{id, type: "job"|"pipeline", kind, status, result | error, finished_at, …}``. Headers:
``X-Layercut-Timestamp: <unix seconds>`` and ``X-Layercut-Signature: sha256=<hex>`` where hex is
HMAC-SHA256 with key ``settings.callback_secret`` over ``f"{id}.{timestamp}.{body}"`` (body as sent).
Receivers check it with ``verify_signature``. The Standard Webhooks headers come too (``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of {webhook-id}.{timestamp}.{body}>``), so a
receiver may use any Standard Webhooks library, and deduplicate by ``webhook-id``.

Delivery is durable and at least once: a callback is written to the outbox table (``callback_deliveries``) when
its job or pipeline ends (cancelled from ``queued`` included), sent at once on a callback thread, and retried with
exponential backoff from the table — by this process, or by the reaper of any process after a restart — until a
2xx comes back or ``callback_attempts`` attempts have failed. Each attempt has its own timeout and thread, so a
slow receiver delays no other callback. A receiver that never answers is logged, and never fails the job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from layercut.contracts.callback_urls import AllowList, CallbackUrlRefused, check_address, check_callback_url
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.models import CallbackDelivery, Job, Pipeline, utcnow

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Layercut-Timestamp"
SIGNATURE_HEADER = "X-Layercut-Signature"
BACKOFF_SECONDS = 0.5
"""First retry delay; it doubles after each failed attempt (capped at MAX_BACKOFF_SECONDS)."""
MAX_BACKOFF_SECONDS = 60.0

_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="layercut-callback")
"""The callback threads: one attempt each, bounded by its timeout, so a few slow receivers delay no other."""


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


WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
"""The Standard Webhooks headers (standardwebhooks.com), sent beside layercut's own."""


def webhook_signature(secret: str, webhook_id: str, timestamp: str, body: str) -> str:
    """Standard Webhooks' signature: ``v1,`` + base64 of HMAC-SHA256 over ``{webhook-id}.{timestamp}.{body}``."""
    mac = hmac.new(secret.encode(), f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def attempt_once(
    url: str,
    payload: dict[str, Any],
    secret: str,
    timeout: float,
    allowed: AllowList,
    webhook_id: str | None = None,
) -> str | None:
    """One signed POST of ``payload``: None when a 2xx came back, else why not. The URL is checked first
    (``checked_target``: ``CallbackUrlRefused`` when it must not be posted to); redirects are not followed (a 3xx is
    a failure), so a receiver cannot send the callback on to an address the check refuses; ``timeout`` bounds the
    request, so one slow receiver holds up no other callback for longer."""
    import httpx

    body = json.dumps(payload, separators=(",", ":"), default=str)
    timestamp = str(int(time.time()))
    webhook_id = webhook_id or f"msg_{payload['id']}"
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, str(payload["id"]), timestamp, body),
        WEBHOOK_ID_HEADER: webhook_id,
        WEBHOOK_TIMESTAMP_HEADER: timestamp,
        WEBHOOK_SIGNATURE_HEADER: webhook_signature(secret, webhook_id, timestamp, body),
        "User-Agent": "layercut-callback",
    }
    target = checked_target(url, allowed)
    if target.host_header:
        headers["Host"] = target.host_header
    extensions = {"sni_hostname": target.server_name} if target.server_name else {}
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False) as client:
            response = client.post(target.url, content=body.encode(), headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"


def deliver(
    url: str,
    payload: dict[str, Any],
    secret: str,
    attempts: int = 5,
    timeout: float = 10.0,
    backoff: float = BACKOFF_SECONDS,
    allowed: AllowList | None = None,
) -> bool:
    """POST ``payload`` signed, retrying in this thread with exponential backoff; True once a 2xx came back. (The
    service delivers from its outbox instead: ``enqueue``; this is for a caller without a database.)"""
    allowed = allowed or AllowList()
    delay = backoff
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            reason = attempt_once(url, payload, secret, timeout, allowed)
        except CallbackUrlRefused as exc:
            log.error("callback %s for %s refused: %s", url[:200], payload["id"], exc)
            return False
        if reason is None:
            return True
        log.warning("callback %s for %s: attempt %d/%d failed (%s)", url, payload["id"], attempt, attempts, reason)
        if attempt < attempts:
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
    log.error("callback %s for %s given up after %d attempts", url, payload["id"], attempts)
    return False


# --- the outbox ------------------------------------------------------------------------------------


def enqueue(
    settings: Settings, tenant: str, object_type: str, object_id: uuid.UUID, url: str, payload: dict[str, Any]
) -> None:
    """Write the callback of an object that ended to the outbox (once: a second call for it changes nothing), then
    start delivering it in the background; the reaper delivers whatever is still due, also after a restart."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        row = CallbackDelivery(
            tenant=tenant,
            object_type=object_type,
            object_id=object_id,
            url=url,
            payload=json.loads(json.dumps(payload, default=str)),
        )
        session.add(row)
        try:
            session.commit()
        except IntegrityError:  # already in the outbox: delivered, or on its way
            session.rollback()
            return
        delivery_id = row.id
    kick(settings, delivery_id)


def kick(settings: Settings, delivery_id: uuid.UUID | None = None, delay: float = 0.0) -> None:
    """Deliver what is due (only ``delivery_id`` when given) on the callback threads, after ``delay`` seconds."""
    if delay > 0:
        timer = threading.Timer(delay, kick, args=(settings, delivery_id))
        timer.daemon = True
        timer.start()
        return
    _executor.submit(deliver_due, settings, delivery_id)


def deliver_due(settings: Settings, only: uuid.UUID | None = None, limit: int = 50) -> int:
    """Send the outbox's due callbacks, each attempt on its own callback thread (one slow receiver delays no other);
    returns how many were claimed. A claim holds a row for an attempt's time, so two processes never send one row
    at once, and a process that dies mid-attempt leaves it due again once the claim lapses (at least once)."""
    now = utcnow()
    lease = timedelta(seconds=settings.callback_timeout_seconds + 30)
    try:
        with get_sessionmaker(settings.resolved_database_url)() as session:
            query = select(CallbackDelivery).where(
                CallbackDelivery.delivered_at.is_(None),
                CallbackDelivery.given_up_at.is_(None),
                CallbackDelivery.next_attempt_at <= now,
            )
            if only is not None:
                query = query.where(CallbackDelivery.id == only)
            rows = session.scalars(
                query.order_by(CallbackDelivery.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.next_attempt_at = now + lease
            claimed = [row.id for row in rows]
            session.commit()
    except Exception:  # the outbox stays; the next pass (the reaper's) tries again
        log.exception("reading the callback outbox failed")
        return 0
    for delivery_id in claimed:
        _executor.submit(_attempt_row, settings, delivery_id)
    return len(claimed)


def _attempt_row(settings: Settings, delivery_id: uuid.UUID) -> None:
    """One attempt of one outbox row, and its outcome recorded: delivered, due again after a backoff, or given up."""
    delay = 0.0
    with get_sessionmaker(settings.resolved_database_url)() as session:
        row = session.get(CallbackDelivery, delivery_id)
        if row is None or row.delivered_at is not None or row.given_up_at is not None:
            return
        allowed = AllowList.parse(settings.callback_allowed_hosts.split(","))
        try:
            reason = attempt_once(
                row.url, row.payload, settings.callback_secret, settings.callback_timeout_seconds, allowed, str(row.id)
            )
        except CallbackUrlRefused as exc:
            row.given_up_at, row.last_error = utcnow(), f"refused: {exc}"
            session.commit()
            log.error("callback %s for %s refused: %s", row.url[:200], row.object_id, exc)
            return
        row.attempts += 1
        if reason is None:
            row.delivered_at, row.last_error = utcnow(), None
            session.commit()
            return
        row.last_error = reason[:2000]
        if row.attempts >= max(settings.callback_attempts, 1):
            row.given_up_at = utcnow()
            session.commit()
            log.error(
                "callback %s for %s given up after %d attempts (%s)", row.url, row.object_id, row.attempts, reason
            )
            return
        delay = min(BACKOFF_SECONDS * 2 ** (row.attempts - 1), MAX_BACKOFF_SECONDS)
        row.next_attempt_at = utcnow() + timedelta(seconds=delay)
        session.commit()
        log.warning(
            "callback %s for %s: attempt %d/%d failed (%s); next in %.1f s",
            row.url,
            row.object_id,
            row.attempts,
            settings.callback_attempts,
            reason,
            delay,
        )
    kick(settings, delivery_id, delay)


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


def job_finished(settings: Settings, job_id: uuid.UUID) -> None:
    """Put the callback of a finished job in the outbox (and start sending it), if it has a callback_url."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id, populate_existing=True)
        if job is None or not job.callback_url:
            return
        url, payload, tenant = job.callback_url, job_payload(job), job.tenant
    enqueue(settings, tenant, "job", job_id, url, payload)


def pipeline_finished(settings: Settings, pipeline_id: uuid.UUID) -> None:
    """Put the callback of a finished pipeline in the outbox (its steps' statuses and the failing step's error)."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        pipeline = session.get(Pipeline, pipeline_id, populate_existing=True)
        if pipeline is None or not pipeline.callback_url:
            return
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
        url, tenant = pipeline.callback_url, pipeline.tenant
    enqueue(settings, tenant, "pipeline", pipeline_id, url, payload)
