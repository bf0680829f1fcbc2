"""Embedded mode (no broker, SQLite): InProcessDispatcher runs jobs in a thread; failures carry the
LayercutError's code and message; pipelines stop at a failed step; callbacks are signed and retried."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from layercut.jobs import callbacks
from layercut.jobs.dispatch import InProcessDispatcher
from layercut.jobs.service import get_dispatcher
from layercut.settings import Settings
from layercut.store.models import Artifact, ModelVersion, Pipeline
from layercut.testing import services
from layercut.testing.workers import (
    TINY_ANALYZE,
    add_dataset,
    add_job,
    create_pipeline_jobs,
    job_row,
    session_for,
    train_params,
    wait_for,
)

SECRET = "test-secret"


class Receiver:
    """A local HTTP endpoint that answers the first ``failures`` POSTs with 500, then 200, and keeps them all."""

    def __init__(self, failures: int = 1) -> None:
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body, time.monotonic()))
                code = 500 if len(receiver.requests) <= receiver.failures else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    data_dir = tmp_path_factory.mktemp("embedded")
    settings = Settings(
        data_dir=data_dir,
        database_url=None,
        broker_url=None,
        callback_secret=SECRET,
        callback_attempts=3,
        heartbeat_seconds=1,
        progress_interval_seconds=0.2,
    )
    services.migrate(settings.resolved_database_url)  # alembic on SQLite, as `layercut serve` does
    return settings


@pytest.fixture
def receiver():
    r = Receiver(failures=1)
    yield r
    r.close()


def _wait_final(settings: Settings, job_id, timeout: float = 90):
    url = settings.resolved_database_url
    return wait_for(
        lambda: (r := job_row(url, job_id)).status in ("succeeded", "failed", "cancelled") and r,
        timeout,
        0.2,
        "the job to end",
    )


def test_embedded_job_succeeds_with_a_signed_retried_callback(settings, receiver):
    url = settings.resolved_database_url
    dispatcher = get_dispatcher(settings)
    assert isinstance(dispatcher, InProcessDispatcher) and get_dispatcher(settings) is dispatcher
    job_id = add_job(url, "t-embedded", train_params(add_dataset(url, "t-embedded")), callback_url=receiver.url)
    dispatcher.dispatch(job_id, "train")
    row = _wait_final(settings, job_id)
    assert row.status == "succeeded", (row.error_code, row.error_message)
    assert row.worker == "embedded" and row.progress == 1.0 and row.dispatched_at is not None
    with session_for(url) as session:
        model = session.scalars(select(ModelVersion).where(ModelVersion.job_id == job_id)).one()
        assert row.result["model_id"] == str(model.id) and model.trained and model.architecture == "smallcnn"
        artifacts = session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
        assert {Path(a.path).name for a in artifacts} >= {"model.safetensors", "metrics.json", "training_curves.png"}
        assert all((settings.resolved_artifact_root / a.path).stat().st_size == a.bytes for a in artifacts)

    wait_for(lambda: len(receiver.requests) >= 2, 20, what="the callback to be retried after a 500")
    (h1, b1, t1), (h2, b2, t2) = receiver.requests[:2]
    assert t2 - t1 >= callbacks.BACKOFF_SECONDS * 0.9  # backoff between attempts
    for headers, body, _ in receiver.requests[:2]:
        assert callbacks.verify_signature(
            SECRET, body, headers["X-Layercut-Timestamp"], headers["X-Layercut-Signature"]
        )
        assert not callbacks.verify_signature(
            "wrong", body, headers["X-Layercut-Timestamp"], headers["X-Layercut-Signature"]
        )
        assert not callbacks.verify_signature(
            SECRET,
            body.replace(b"succeeded", b"failed"),
            headers["X-Layercut-Timestamp"],
            headers["X-Layercut-Signature"],
        )
        assert not callbacks.verify_signature(
            SECRET, body, str(int(headers["X-Layercut-Timestamp"]) - 3600), headers["X-Layercut-Signature"]
        )
    payload = json.loads(b2)
    assert payload["id"] == str(job_id) and payload["type"] == "job" and payload["kind"] == "train"
    assert payload["status"] == "succeeded" and payload["result"]["model_id"] == row.result["model_id"]
    assert payload["finished_at"]
    time.sleep(1.0)
    assert len(receiver.requests) == 2  # a 200 ends the retries


def test_embedded_failing_job_records_code_and_message(settings, receiver):
    url = settings.resolved_database_url
    dataset_id = add_dataset(url, "t-embedded", kind="folder", location="/nonexistent/layercut-images")
    job_id = add_job(url, "t-embedded", train_params(dataset_id), callback_url=receiver.url)
    get_dispatcher(settings).dispatch(job_id, "train")
    row = _wait_final(settings, job_id)
    assert row.status == "failed" and row.error_code == "bad_data"
    assert "/nonexistent/layercut-images" in row.error_message and "neither an existing folder" in row.error_message
    wait_for(lambda: len(receiver.requests) >= 2, 20, what="the failure callback")
    payload = json.loads(receiver.requests[-1][1])
    assert payload["status"] == "failed" and payload["error"] == {"code": "bad_data", "message": row.error_message}


def test_embedded_pipeline_stops_at_a_failed_step(settings, receiver):
    url = settings.resolved_database_url
    tenant = "t-embedded-pipe"
    dataset_id = add_dataset(url, tenant, kind="folder", location="/nonexistent/layercut-pipeline")
    with session_for(url) as session:
        pipeline = Pipeline(tenant=tenant, params={}, callback_url=receiver.url)
        session.add(pipeline)
        session.flush()
        jobs = create_pipeline_jobs(
            session,
            tenant,
            pipeline,
            [
                ("train", train_params(dataset_id)),
                ("analyze", {"kind": "analyze", "model": {"from_job": "$step:0"}, "analyze": TINY_ANALYZE}),
            ],
        )
        session.commit()
        ids, pipeline_id = [j.id for j in jobs], pipeline.id
    get_dispatcher(settings).dispatch(ids[0], "train")
    assert _wait_final(settings, ids[0]).status == "failed"
    wait_for(lambda: job_row(url, ids[1]).status == "cancelled", 10, what="the later step to be cancelled")
    with session_for(url) as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline.status == "failed" and pipeline.finished_at is not None
    wait_for(
        lambda: any(json.loads(b)["id"] == str(pipeline_id) for _, b, _ in receiver.requests[1:]),
        20,
        what="the pipeline callback",
    )
    payload = next(json.loads(b) for _, b, _ in receiver.requests if json.loads(b)["id"] == str(pipeline_id))
    assert payload["type"] == "pipeline" and payload["status"] == "failed"
    assert payload["error"]["code"] == "bad_data" and [j["status"] for j in payload["jobs"]] == ["failed", "cancelled"]


def test_deliver_gives_up_without_raising():
    assert (
        callbacks.deliver("http://127.0.0.1:9/unreachable", {"id": "x"}, SECRET, attempts=2, timeout=0.5, backoff=0.05)
        is False
    )
