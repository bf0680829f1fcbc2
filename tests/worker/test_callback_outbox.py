"""Callbacks are durable and at least once: written to the outbox when a job ends, sent at once, retried from the
table by whoever runs next (a restarted process, the reaper), signed the Standard Webhooks way, and a slow
receiver delays no other callback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import update

from layercut.jobs import callbacks
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.models import CallbackDelivery
from layercut.testing.workers import wait_for

SECRET = "outbox-secret"


class Receiver:
    """A loopback endpoint that keeps every POST (headers, body) and answers after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, port: int = 0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                receiver.requests.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(url: str, **overrides) -> Settings:
    return Settings(
        database_url=url,
        broker_url="redis://127.0.0.1:6379/7",
        callback_secret=SECRET,
        callback_allowed_hosts="127.0.0.1",
        callback_timeout_seconds=5,
        **overrides,
    )


def row_of(url: str, object_id: uuid.UUID) -> CallbackDelivery:
    with get_sessionmaker(url)() as session:
        return session.query(CallbackDelivery).filter_by(object_id=object_id).one()


def test_a_callback_survives_its_receiver_being_down_and_the_sender_restarting(postgres_url, monkeypatch):
    monkeypatch.setattr(callbacks, "BACKOFF_SECONDS", 30.0)  # this process's own retry comes too late to matter
    port = free_port()
    job_id = uuid.uuid4()
    settings = settings_for(postgres_url, callback_attempts=5)
    payload = {"id": str(job_id), "type": "job", "kind": "train", "status": "succeeded"}
    callbacks.enqueue(settings, "t-outbox", "job", job_id, f"http://127.0.0.1:{port}/hook", payload)
    wait_for(lambda: row_of(postgres_url, job_id).attempts == 1, 10, what="the first attempt to fail")
    failed = row_of(postgres_url, job_id)
    assert failed.delivered_at is None and failed.last_error and failed.given_up_at is None
    callbacks.enqueue(settings, "t-outbox", "job", job_id, f"http://127.0.0.1:{port}/hook", payload)  # no double

    receiver = Receiver(port=port)  # the receiver comes back; the process that began the delivery is "gone":
    try:
        with get_sessionmaker(postgres_url)() as session:  # its pending retry timer is overtaken by the reaper's pass
            session.execute(
                update(CallbackDelivery)
                .where(CallbackDelivery.object_id == job_id)
                .values(next_attempt_at=failed.created_at)
            )
            session.commit()
        assert callbacks.deliver_due(settings_for(postgres_url)) >= 1
        wait_for(lambda: row_of(postgres_url, job_id).delivered_at is not None, 10, what="the delivery")
    finally:
        receiver.close()
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    delivered = row_of(postgres_url, job_id)
    assert delivered.attempts == 2 and json.loads(body)["id"] == str(job_id)
    # the Standard Webhooks signature, checked by hand: base64 HMAC-SHA256 of "{webhook-id}.{timestamp}.{body}"
    webhook_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert webhook_id == str(delivered.id)
    expected = hmac.new(SECRET.encode(), f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()
    assert callbacks.verify_signature(SECRET, body, headers["X-Layercut-Timestamp"], headers["X-Layercut-Signature"])


def test_a_slow_receiver_delays_no_other_callback(postgres_url):
    slow, fast = Receiver(delay=4.0), Receiver()
    settings = settings_for(postgres_url)
    try:
        slow_ids = [uuid.uuid4() for _ in range(3)]
        for object_id in slow_ids:
            callbacks.enqueue(settings, "t-outbox", "job", object_id, slow.url, {"id": str(object_id)})
        started = time.monotonic()
        quick = uuid.uuid4()
        callbacks.enqueue(settings, "t-outbox", "job", quick, fast.url, {"id": str(quick)})
        wait_for(lambda: len(fast.requests) == 1, 10, 0.05, what="the fast receiver's callback")
        assert time.monotonic() - started < 2.0
        wait_for(lambda: len(slow.requests) == 3, 20, what="the slow receiver's callbacks")
    finally:
        slow.close()
        fast.close()


def test_a_refused_url_is_given_up_at_once(postgres_url):
    object_id = uuid.uuid4()
    settings = settings_for(postgres_url)
    callbacks.enqueue(settings, "t-outbox", "job", object_id, "http://169.254.169.254/latest", {"id": str(object_id)})
    wait_for(lambda: row_of(postgres_url, object_id).given_up_at is not None, 10, what="the refusal")
    assert row_of(postgres_url, object_id).last_error.startswith("refused:")
