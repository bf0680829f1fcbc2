"""layercut.client against httpx.MockTransport: retries, idempotency keys, wait() backoff, verified downloads."""

from __future__ import annotations

import hashlib
import json
import sys

import httpx
import pytest

from layercut.client import ApiError, ChecksumMismatch, JobFailed, LayercutClient, NotFound, WaitTimeout


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def make_client(handler, clock: FakeClock | None = None, **kwargs) -> LayercutClient:
    clock = clock or FakeClock()
    return LayercutClient(
        "http://layercut.test",
        "lc_secret",
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        clock=clock,
        **kwargs,
    )


def test_no_torch_import():
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", "import sys, layercut.client; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_get_retries_503_then_succeeds_and_sends_the_key():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, json={"detail": "database unavailable"})
        return httpx.Response(200, json={"id": "j1", "status": "running"})

    clock = FakeClock()
    client = make_client(handler, clock)
    assert client.get_job("j1")["status"] == "running"
    assert len(calls) == 3
    assert all(c.headers["Authorization"] == "Bearer lc_secret" for c in calls)
    assert len(clock.sleeps) == 2 and clock.sleeps[1] > clock.sleeps[0]  # exponential backoff


def test_retry_after_header_is_honoured():
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": "slow down"})
        return httpx.Response(200, json={"id": "j1", "status": "queued"})

    clock = FakeClock()
    make_client(handler, clock).get_job("j1")
    assert clock.sleeps == [3.0]


def test_connection_errors_are_retried_then_reported():
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    clock = FakeClock()
    client = make_client(handler, clock, retries=3)
    with pytest.raises(Exception, match="ConnectError"):
        client.get_job("j1")
    assert len(clock.sleeps) == 3
    assert max(clock.sleeps) <= client.backoff_cap * 1.1


def test_post_retried_after_5xx_reuses_one_idempotency_key():
    keys = []

    def handler(request):
        keys.append(request.headers.get("Idempotency-Key"))
        assert json.loads(request.content) == {"params": {"kind": "train"}, "callback_url": "http://cb.test/x"}
        if len(keys) == 1:
            return httpx.Response(502)
        return httpx.Response(201, json={"id": "j1", "status": "queued"})

    job = make_client(handler).submit_job({"kind": "train"}, callback_url="http://cb.test/x")
    assert job["id"] == "j1"
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]


def test_given_idempotency_key_is_sent_and_differs_per_call_otherwise():
    keys = []

    def handler(request):
        keys.append(request.headers.get("Idempotency-Key"))
        return httpx.Response(201, json={"id": "p1", "status": "queued"})

    client = make_client(handler)
    client.submit_pipeline({"arch": "smallcnn"}, idempotency_key="mine")
    client.submit_pipeline({"arch": "smallcnn"})
    client.submit_pipeline({"arch": "smallcnn"})
    assert keys[0] == "mine" and keys[1] != keys[2]


def test_4xx_is_not_retried_and_names_the_field():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(
            422, json={"detail": [{"loc": ["body", "params", "arch"], "msg": "unknown architecture"}]}
        )

    with pytest.raises(ApiError, match="params.arch: unknown architecture") as info:
        make_client(handler).submit_job({"kind": "train", "arch": "nope"})
    assert info.value.status_code == 422 and len(calls) == 1


def test_wait_backs_off_with_a_cap_and_stops_at_success():
    states = iter(["queued"] + ["running"] * 12 + ["succeeded"])
    gets = []

    def handler(request):
        gets.append(request.url.path)
        return httpx.Response(200, json={"id": "j1", "status": next(states)})

    clock = FakeClock()
    record = make_client(handler, clock).wait("j1", timeout=3600, poll=0.5, poll_cap=4.0)
    assert record["status"] == "succeeded"
    assert len(gets) == 14 and set(gets) == {"/v1/jobs/j1"}
    assert clock.sleeps[0] < clock.sleeps[3]  # grows
    assert max(clock.sleeps) <= 4.0 * 1.1  # capped (with jitter)
    assert clock.sleeps[-1] >= 4.0 * 0.9


def test_wait_reports_every_step_and_percent_change_and_polls_sooner_when_it_moves():
    """``on_update`` fires when the pipeline's status, or any step's status, stage or percent changes (not only
    when the overall status does), once per change; after a change the polling starts again from ``poll``."""

    def pipeline(status, *steps):
        return {"id": "p1", "status": status, "steps": [dict(zip(("status", "stage", "percent"), s)) for s in steps]}

    records = iter(
        [
            pipeline("running", ("running", "train", 10.0), ("queued", None, 0.0)),
            pipeline("running", ("running", "train", 10.0), ("queued", None, 0.0)),  # nothing moved
            pipeline("running", ("running", "train", 10.0), ("queued", None, 0.0)),  # nothing moved
            pipeline("running", ("running", "train", 55.0), ("queued", None, 0.0)),  # percent
            pipeline("running", ("succeeded", "train", 100.0), ("running", "analyze", 0.0)),  # next step
            pipeline("running", ("succeeded", "train", 100.0), ("running", "depth probes", 80.0)),  # stage
            pipeline("succeeded", ("succeeded", "train", 100.0), ("succeeded", "depth probes", 100.0)),
        ]
    )

    def handler(request):
        return httpx.Response(200, json=next(records))

    seen = []
    clock = FakeClock()
    make_client(handler, clock).wait("p1", kind="pipeline", poll=1.0, poll_cap=8.0, on_update=seen.append)
    assert [[(s["stage"], s["percent"]) for s in r["steps"]] for r in seen] == [
        [("train", 10.0), (None, 0.0)],
        [("train", 55.0), (None, 0.0)],
        [("train", 100.0), ("analyze", 0.0)],
        [("train", 100.0), ("depth probes", 80.0)],
        [("train", 100.0), ("depth probes", 100.0)],
    ]
    assert clock.sleeps[1] > clock.sleeps[0] * 1.3 and clock.sleeps[2] > clock.sleeps[1]  # backing off while idle
    assert clock.sleeps[3] < clock.sleeps[2] / 1.3  # moved: sooner again


@pytest.mark.parametrize("final", ["failed", "cancelled"])
def test_wait_raises_on_failed_or_cancelled(final):
    states = iter(["running", final])

    def handler(request):
        status = next(states)
        body = {"id": "j1", "status": status}
        if status == "failed":
            body["error"] = {"code": "out_of_memory", "message": "CUDA out of memory"}
        return httpx.Response(200, json=body)

    with pytest.raises(JobFailed, match=final) as info:
        make_client(handler).wait("j1")
    assert info.value.record["status"] == final
    if final == "failed":
        assert "out_of_memory" in str(info.value)


def test_wait_times_out_with_the_last_record():
    def handler(request):
        return httpx.Response(200, json={"id": "j1", "status": "running", "progress": 0.4})

    clock = FakeClock()
    with pytest.raises(WaitTimeout, match="still running after 30 s") as info:
        make_client(handler, clock).wait("j1", timeout=30, poll=1, poll_cap=5)
    assert info.value.record["progress"] == 0.4
    assert clock.now == pytest.approx(30)  # never sleeps past the deadline


def test_wait_falls_back_to_a_pipeline():
    def handler(request):
        if request.url.path.startswith("/v1/jobs/"):
            return httpx.Response(404, json={"detail": "job p1 not found"})
        return httpx.Response(200, json={"id": "p1", "status": "succeeded", "jobs": []})

    assert make_client(handler).wait("p1")["id"] == "p1"


def test_pipeline_failure_names_the_failed_step():
    def handler(request):
        if request.url.path.startswith("/v1/jobs/"):
            return httpx.Response(404, json={"detail": "not found"})
        return httpx.Response(
            200,
            json={
                "id": "p1",
                "status": "failed",
                "jobs": [
                    {"id": "a", "kind": "train", "status": "succeeded"},
                    {"id": "b", "kind": "analyze", "status": "failed"},
                ],
            },
        )

    with pytest.raises(JobFailed, match="step analyze b"):
        make_client(handler).wait("p1")


def test_not_found_is_its_own_error():
    with pytest.raises(NotFound):
        make_client(lambda r: httpx.Response(404, json={"detail": "nope"})).get_job("x")


PAYLOAD = b"weights" * 100_000


def artifact_handler(listed_sha: str, body: bytes = PAYLOAD):
    def handler(request):
        if request.url.path == "/v1/jobs/j1/artifacts":
            return httpx.Response(
                200, json=[{"id": "a1", "name": "model.safetensors", "sha256": listed_sha, "bytes": len(body)}]
            )
        if request.url.path == "/v1/artifacts/a1":
            return httpx.Response(
                200,
                content=body,
                headers={
                    "Content-Disposition": 'attachment; filename="model.safetensors"',
                    "Content-Type": "application/octet-stream",
                },
            )
        return httpx.Response(404, json={"detail": "no"})

    return handler


def test_download_verifies_the_listed_sha256(tmp_path):
    client = make_client(artifact_handler(hashlib.sha256(PAYLOAD).hexdigest()))
    [artifact] = client.list_artifacts("j1")
    path = client.download_artifact(artifact, tmp_path)
    assert path == tmp_path / "model.safetensors" and path.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_download_sha256_mismatch_raises_and_keeps_nothing(tmp_path):
    client = make_client(artifact_handler(hashlib.sha256(b"something else").hexdigest()))
    [artifact] = client.list_artifacts("j1")
    with pytest.raises(ChecksumMismatch):
        client.download_artifact(artifact, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_download_by_id_needs_a_checksum(tmp_path):
    client = make_client(artifact_handler("0" * 64))
    with pytest.raises(ChecksumMismatch, match="no sha256"):
        client.download_artifact("a1", tmp_path)
    dest = tmp_path / "sub" / "copy.bin"
    assert client.download_artifact("a1", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest()) == dest
    assert dest.read_bytes() == PAYLOAD


def test_download_restarts_a_stream_cut_midway(tmp_path):
    attempts = []

    class Flaky(httpx.SyncByteStream):
        def __iter__(self):
            yield PAYLOAD[:1000]
            raise httpx.ReadError("connection reset")

    def handler(request):
        attempts.append(1)
        if len(attempts) == 1:
            return httpx.Response(200, stream=Flaky())
        return httpx.Response(200, content=PAYLOAD)

    dest = make_client(handler).download_artifact("a1", tmp_path / "m", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD and len(attempts) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_checkpoint_header_checksum_and_hostile_filename(tmp_path):
    body = b"x"

    def handler(request):
        assert request.url.path == "/v1/models/m1/checkpoint"
        return httpx.Response(
            200,
            content=body,
            headers={
                "Content-Disposition": 'attachment; filename="../../etc/evil"',
                "X-Layercut-Sha256": hashlib.sha256(b"y").hexdigest(),
            },
        )

    with pytest.raises(ChecksumMismatch):
        make_client(handler).download_checkpoint("m1", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_without_checksum_is_saved_under_its_own_name_only(tmp_path):
    def handler(request):
        return httpx.Response(
            200, content=b"x", headers={"Content-Disposition": 'attachment; filename="../../etc/evil"'}
        )

    assert make_client(handler).download_checkpoint("m1", tmp_path) == tmp_path / "evil"


def test_upload_is_retried_with_the_whole_file_and_one_key(tmp_path):
    archive = tmp_path / "flowers.zip"
    archive.write_bytes(b"PK\x03\x04" + b"z" * 5000)
    seen = []

    def handler(request):
        body = request.read()
        seen.append((request.headers["Idempotency-Key"], archive.read_bytes() in body, b'name="name"' in body))
        if len(seen) == 1:
            return httpx.Response(503)
        return httpx.Response(201, json={"id": "d1", "name": "flowers"})

    assert make_client(handler).upload_dataset(archive, "flowers")["id"] == "d1"
    assert len(seen) == 2 and seen[0][0] == seen[1][0]
    assert all(whole and named for _, whole, named in seen)


def test_import_model_uploads_the_weights_and_the_spec_and_retries_with_one_key(tmp_path):
    weights = tmp_path / "resnet18.pt"
    weights.write_bytes(b"PK\x03\x04 state dict bytes")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, json={"detail": "database unavailable"})
        return httpx.Response(201, json={"id": "j1", "kind": "import", "status": "queued"})

    client = make_client(handler, FakeClock())
    spec = {"architecture": "resnet18", "classes": ["a", "b"], "image_size": 64, "mean": [0.5], "std": [0.5]}
    assert client.import_model(weights, spec, dataset_id="d1")["kind"] == "import"
    assert len(seen) == 2 and {r.url.path for r in seen} == {"/v1/models/import"}
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
    body = seen[1].content
    assert b'filename="resnet18.pt"' in body and b"PK\x03\x04 state dict bytes" in body  # the file, sent again
    assert json.dumps(spec).encode() in body and b"d1" in body


def test_reports_are_read_as_html_and_written_when_asked(tmp_path):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.endswith("/missing/report"):
            return httpx.Response(404, json={"detail": "pipeline missing not found"})
        return httpx.Response(200, html=f"<html>{request.url.path}</html>")

    client = make_client(handler)
    assert client.job_report("j1") == "<html>/v1/jobs/j1/report</html>"
    page = client.pipeline_report("p1", dest=tmp_path / "report.html")
    assert (tmp_path / "report.html").read_text() == page == "<html>/v1/pipelines/p1/report</html>"
    with pytest.raises(NotFound):
        client.pipeline_report("missing")
    assert seen == ["/v1/jobs/j1/report", "/v1/pipelines/p1/report", "/v1/pipelines/missing/report"]
