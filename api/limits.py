"""What the API checks before it reads a request's body, and the headers every answer carries.

``GuardRequests`` (pure ASGI) runs before routing:

- a client address with too many failed key checks in the last minute (``LAYERCUT_AUTH_FAILURES_PER_MINUTE``) is
  answered 429 with Retry-After before its key is even looked up;
- every ``/v1`` request must carry a valid key (``layercut.api.deps.authenticate``, the same check as the routes'):
  without one the answer is 401 before a byte of the body is read, so an anonymous caller cannot make the server
  buffer, parse or spool anything;
- a body larger than its route's limit is refused with 413: at once when ``Content-Length`` says so, else (chunked)
  as soon as the bytes received pass the limit. Uploads (``POST /v1/datasets/upload``, ``POST /v1/models/import``)
  may carry ``LAYERCUT_UPLOAD_MAX_BYTES`` plus a little for the multipart framing; every other body
  ``LAYERCUT_JSON_MAX_BYTES``.

``SecurityHeaders`` adds ``X-Content-Type-Options: nosniff`` to every answer, and a Content-Security-Policy to the
answers of ``/v1``: nothing may load for a JSON answer; an HTML report may use its inline styles and ``data:``
pictures only (no scripts). An answer that sets its own policy (the ``/ui`` dashboard) keeps it.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, status

from layercut.api.deps import TENANT_SCOPE_KEY, UNKNOWN_KEY, authenticate, bearer_secret
from layercut.api.read_cache import read_cache_for
from layercut.settings import Settings

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPLOAD_ROUTES = frozenset({("POST", "/v1/datasets/upload"), ("POST", "/v1/models/import")})
MULTIPART_ALLOWANCE = 64 * 1024
"""Bytes an upload's body may carry beyond LAYERCUT_UPLOAD_MAX_BYTES: the multipart boundaries and the small form
fields beside the file (the file itself is held to the limit exactly when it is saved)."""

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
"""A report is one self-contained page: inline CSS and data: pictures, no scripts, nothing from elsewhere."""


def _is_api(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def body_limit(settings: Settings, method: str, path: str) -> tuple[int, str]:
    """The most bytes a request's body may have, and what the answer says when it has more (the setting, its value)."""
    if (method, path.rstrip("/")) in UPLOAD_ROUTES:
        return settings.upload_max_bytes + MULTIPART_ALLOWANCE, (
            f"the upload is larger than the limit of {settings.upload_max_bytes} bytes "
            "(the server's LAYERCUT_UPLOAD_MAX_BYTES); send a smaller file"
        )
    return settings.json_max_bytes, (
        f"the request body is larger than the limit of {settings.json_max_bytes} bytes "
        "(the server's LAYERCUT_JSON_MAX_BYTES); send less"
    )


async def _answer(send: Send, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if status_code == status.HTTP_413_CONTENT_TOO_LARGE:
        raw.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": status_code, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class FailedAuthentications:
    """Failed key checks per client address over the last minute: past the limit, the address gets 429 (with
    Retry-After) without its key being looked up, until its oldest failure is a minute old. Bounded: at most
    ``MAX_ADDRESSES`` addresses are remembered, the least recently failing forgotten first."""

    WINDOW = 60.0
    MAX_ADDRESSES = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float]:
        times = self.failures.get(address, deque())
        cutoff = self.clock() - self.WINDOW
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def wait_seconds(self, address: str, limit: int) -> int:
        """Seconds until ``address`` may try again (0: now)."""
        if limit <= 0 or address not in self.failures:
            return 0
        times = self._recent(address)
        if len(times) < limit:
            return 0
        return max(1, math.ceil(times[0] + self.WINDOW - self.clock()))

    def record(self, address: str) -> None:
        times = self._recent(address)
        times.append(self.clock())
        self.failures[address] = times
        self.failures.move_to_end(address)
        while len(self.failures) > self.MAX_ADDRESSES:
            self.failures.popitem(last=False)


class GuardRequests:
    """Key first (``/v1``), then a counted body; see the module's docstring."""

    def __init__(self, app: Any, settings_of: Callable[[], Settings]) -> None:
        self.app = app
        self.settings_of = settings_of
        self.failed = FailedAuthentications()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings_of()
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if _is_api(path):
            cache = read_cache_for(
                settings.resolved_database_url,
                settings.read_cache,
                settings.read_cache_entries,
                settings.read_cache_seconds,
            )
            address = (scope.get("client") or ("unknown", 0))[0]
            wait = self.failed.wait_seconds(address, settings.auth_failures_per_minute)
            if wait:
                await _answer(
                    send,
                    status.HTTP_429_TOO_MANY_REQUESTS,
                    f"too many failed authentications from your address ({settings.auth_failures_per_minute} a "
                    f"minute at most); try again in {wait} s with a valid key",
                    {"Retry-After": str(wait)},
                )
                return
            try:
                tenant = await authenticate(settings, cache, bearer_secret(_header(scope, b"authorization")))
            except HTTPException as exc:
                if exc.detail == UNKNOWN_KEY:  # a wrong key, not a missing one: what guessing looks like
                    self.failed.record(address)
                await _answer(send, exc.status_code, str(exc.detail), dict(exc.headers or {}))
                return
            scope.setdefault("state", {})[TENANT_SCOPE_KEY] = tenant

        limit, too_large = body_limit(settings, method, path)
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                too_long = int(declared) > limit
            except ValueError:
                await _answer(send, status.HTTP_400_BAD_REQUEST, "the Content-Length header is not a number")
                return
            if too_long:
                await _answer(send, status.HTTP_413_CONTENT_TOO_LARGE, too_large)
                return

        received = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    # FastAPI hands an HTTPException raised while the body is read to the error handler
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, too_large)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except HTTPException:
            if not refused or started:
                raise
            await _answer(send, status.HTTP_413_CONTENT_TOO_LARGE, too_large)


class SecurityHeaders:
    """``nosniff`` on every answer; a Content-Security-Policy on ``/v1`` answers that set none."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = _is_api(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {key.lower() for key, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if api and b"content-security-policy" not in names:
                    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                    policy = REPORT_CSP if content_type.startswith(b"text/html") else API_CSP
                    headers.append((b"content-security-policy", policy.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
