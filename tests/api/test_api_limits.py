"""Hostile tenants (issue 11): the key is checked before a body is read, bodies and uploads are capped while they
arrive, callback URLs cannot reach the service's own network, odd bodies are 4xx, readiness names no host without
a key, answers carry nosniff and a CSP, links ignore the Host header, and served messages name no server folder."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from layercut.api.limits import API_CSP, REPORT_CSP
from layercut.contracts.callback_urls import AllowList, CallbackUrlRefused, check_callback_url
from layercut.contracts.errors import LayercutError
from layercut.jobs import callbacks, runner
from layercut.jobs.outputs import relative_json_files
from layercut.store.models import Job
from layercut.testing.api_env import make_env

TRAIN = {"kind": "train", "arch": "smallcnn", "train": {"epochs": 1}}


@pytest.fixture
def strict_env(postgres_url: str, tmp_path: Path):
    """The API with small limits and no callback host allowed (the tests' own default allows loopback)."""
    e = make_env(postgres_url, tmp_path, json_max_bytes=4096, upload_max_bytes=2048, callback_allowed_hosts="")
    yield e
    e.client.close()


def call_asgi(app, method: str, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, dict, int]:
    """Send one request straight to the ASGI app: (status, body, chunks the app read)."""
    pending = list(chunks)
    read = 0
    answer: dict = {"status": None, "body": b""}

    async def receive():
        nonlocal read
        if not pending:
            return {"type": "http.disconnect"}
        read += 1
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return answer["status"], json.loads(answer["body"] or b"null"), read


# --- 1. the key before the body; bodies and uploads capped as they arrive ---------------------------------------


def test_no_key_is_refused_before_the_body_is_read(strict_env):
    for headers in ({}, {"Authorization": "Bearer lc_not-a-key"}):
        status, body, read = call_asgi(
            strict_env.app,
            "POST",
            "/v1/datasets/upload",
            {**headers, "Content-Length": str(500 * 1024**2), "Content-Type": "multipart/form-data; boundary=x"},
            [b"--x\r\n"] * 3,
        )
        assert status == 401 and read == 0 and "API key" in body["detail"]


def test_a_json_body_over_the_cap_is_413_declared_or_chunked(strict_env):
    env = strict_env
    big = {"data": {"dataset_id": str(uuid.uuid4())}, "labels": {"note": "x" * 200}, "arch": "x" * 8000}
    response = env.client.post("/v1/pipelines", json=big, headers=env.headers)
    assert response.status_code == 413
    assert "4096" in response.json()["detail"] and "LAYERCUT_JSON_MAX_BYTES" in response.json()["detail"]
    # no Content-Length: counted as it arrives, and no more is read once past the limit
    status, body, read = call_asgi(
        env.app,
        "POST",
        "/v1/pipelines",
        {**env.headers, "Content-Type": "application/json"},
        [b" " * 1024] * 50,
    )
    assert status == 413 and "LAYERCUT_JSON_MAX_BYTES" in body["detail"] and read == 5


def test_an_upload_over_the_limit_is_413_and_leaves_nothing(strict_env):
    env = strict_env
    incoming = env.settings.resolved_artifact_root / env.tenant / "datasets" / ".incoming"
    response = env.client.post("/v1/datasets/upload", files={"file": ("big.zip", b"\0" * 200_000)}, headers=env.headers)
    assert (
        response.status_code == 413
        and "2048 bytes (the server's LAYERCUT_UPLOAD_MAX_BYTES)" in response.json()["detail"]
    )
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    status, body, read = call_asgi(
        env.app,
        "POST",
        "/v1/datasets/upload",
        {**env.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        [head] + [b"\0" * 16384] * 40,
    )
    assert status == 413 and read < 10
    assert not incoming.exists() or not any(incoming.iterdir())


# --- 2. callback URLs ---------------------------------------------------------------------------------------------

REFUSED = [
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://localhost:6379",
    "http://[::1]:5432/",
    "http://0/",
    "http://2852039166/",
    "http://0x7f.1/",
    "http://user:pw@example.com/hook",
    "https://example.com/" + "a" * 3000,  # over 2048 characters (the body cap of this test is 4096 bytes)
]


def test_callback_urls_to_the_services_network_are_422(strict_env):
    env = strict_env
    dataset = env.dataset()
    for url in REFUSED:
        body = {"params": {**TRAIN, "data": {"dataset_id": dataset}}, "callback_url": url}
        response = env.client.post("/v1/jobs", json=body, headers=env.headers)
        assert response.status_code == 422, (url[:60], response.text[:200])
        assert response.json()["detail"][0]["loc"] == ["body", "callback_url"], url[:60]
    pipeline = {"data": {"dataset_id": dataset}, "callback_url": "http://127.0.0.1:8000/"}
    response = env.client.post("/v1/pipelines", json=pipeline, headers=env.headers)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "callback_url"]
    ok = {"params": {**TRAIN, "data": {"dataset_id": dataset}}, "callback_url": "https://hooks.example.com/x"}
    assert env.client.post("/v1/jobs", json=ok, headers=env.headers).status_code == 201


def test_the_allow_list_reenables_chosen_hosts():
    allowed = AllowList.parse("10.0.0.0/8, hooks.internal ,".split(","))
    check_callback_url("http://10.1.2.3/x", allowed)
    check_callback_url("http://hooks.internal:8080/x", allowed)
    for url in ("http://192.168.1.1/", "http://localhost/", "ftp://example.com/", "http://127.1/"):
        with pytest.raises(CallbackUrlRefused):
            check_callback_url(url, allowed)


class Redirecting:
    """A loopback receiver that answers every POST with a redirect (to itself)."""

    def __init__(self) -> None:
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                outer.host = self.headers["Host"]
                self.send_response(307)
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_delivery_resolves_checks_pins_and_never_follows_redirects(monkeypatch):
    receiver = Redirecting()
    try:
        real = socket.getaddrinfo
        monkeypatch.setattr(
            callbacks.socket,
            "getaddrinfo",
            lambda host, port, *a, **k: (
                real("127.0.0.1", port, *a, **k) if host == "hooks.example" else real(host, port, *a, **k)
            ),
        )
        url = f"http://hooks.example:{receiver.port}/hook"
        # a public-looking name that resolves to loopback: refused at delivery, nothing sent
        with pytest.raises(CallbackUrlRefused, match="loopback"):
            callbacks.checked_target(url, AllowList())
        assert callbacks.deliver(url, {"id": "x"}, "s", attempts=2, timeout=2, backoff=0.01) is False
        assert receiver.posts == 0
        # its network allow-listed: sent to the address checked, Host naming the URL's host; the 307 is not followed
        allowed = AllowList.parse(["127.0.0.0/8"])
        target = callbacks.checked_target(url, allowed)
        assert target.url.startswith(f"http://127.0.0.1:{receiver.port}/") and target.host_header.startswith("hooks.")
        assert callbacks.deliver(url, {"id": "x"}, "s", attempts=1, timeout=2, allowed=allowed) is False
        assert receiver.posts == 1 and receiver.host == f"hooks.example:{receiver.port}"
    finally:
        receiver.close()


# --- 3. odd bodies, readiness, headers, links -------------------------------------------------------------------


def test_nan_and_deep_nesting_are_4xx_not_500(env):
    dataset = env.dataset()
    body = json.dumps({"data": {"dataset_id": dataset}, "select": {"max_drop": float("nan")}})  # writes NaN
    response = env.client.post(
        "/v1/pipelines", content=body, headers={**env.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "select", "max_drop"]
    deep = "[" * 100_000 + "]" * 100_000
    response = env.client.post(
        "/v1/models/import",
        files={"weights": ("w.safetensors", b"\0" * 16)},
        data={"spec": deep},
        headers=env.headers,
    )
    assert 400 <= response.status_code < 500, response.text[:200]
    response = env.client.post(
        "/v1/jobs", content='{"params": ' + deep + "}", headers={**env.headers, "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500


def test_readyz_names_no_host_without_a_key(env):
    env.settings.broker_url = "redis://127.0.0.1:1/0"
    plain = env.client.get("/readyz")
    assert plain.status_code == 503
    assert plain.json()["checks"] == {"database": "ok", "broker": "unavailable", "artifacts": "ok"}
    assert "127.0.0.1" not in plain.text
    detailed = env.client.get("/readyz", headers=env.headers)
    assert detailed.status_code == 503 and detailed.json()["checks"]["broker"] not in ("ok", "unavailable")


def test_answers_carry_nosniff_and_a_content_security_policy(env):
    answer = env.client.get("/v1/jobs", headers=env.headers)
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["content-security-policy"] == API_CSP
    refused = env.client.get("/v1/jobs")
    assert refused.status_code == 401 and refused.headers["x-content-type-options"] == "nosniff"
    job = env.finished_job()
    report = env.client.get(f"/v1/jobs/{job}/report", headers=env.headers)
    assert report.status_code == 200 and report.headers["content-security-policy"] == REPORT_CSP
    assert "<script" not in report.text.lower()
    ui = env.client.get("/ui")
    assert "script-src 'self'" in ui.headers["content-security-policy"]  # the dashboard keeps its own policy


def test_download_links_ignore_the_host_header(postgres_url, tmp_path):
    for public_url, expected in ((None, ""), ("https://layercut.example.com/", "https://layercut.example.com")):
        env = make_env(postgres_url, tmp_path / str(bool(public_url)), public_url=public_url)
        job = env.finished_job(artifacts={"a.txt": (b"x", "text/plain")})
        body = env.client.get(f"/v1/jobs/{job}", headers={**env.headers, "Host": "evil.example"}).json()
        artifact = body["artifacts"][0]
        assert artifact["download_url"] == f"{expected}/v1/artifacts/{artifact['id']}"
        env.client.close()


# --- 4. no server folders in what the API serves -----------------------------------------------------------------


def test_job_errors_and_served_json_name_no_server_folder(env, monkeypatch):
    root = env.settings.resolved_artifact_root
    dataset = env.dataset()
    job_id = env.client.post(
        "/v1/jobs", json={"params": {**TRAIN, "data": {"dataset_id": dataset}}}, headers=env.headers
    ).json()["id"]

    def fail(params, resolver, out, settings, progress):
        raise LayercutError(f"cannot read {out / 'model.safetensors'} (under {root})")

    monkeypatch.setattr(runner, "run_stage", fail)
    assert runner.execute_job(job_id, env.settings, worker_name="test") == "failed"
    served = env.client.get(f"/v1/jobs/{job_id}", headers=env.headers)
    message = served.json()["error"]["message"]
    assert str(root) not in served.text and message.startswith(f"cannot read {env.tenant}/{job_id}/model.safetensors")

    out = root / env.tenant / "some-job"
    out.mkdir(parents=True)
    (out / "compare.json").write_text(json.dumps({"base": {"checkpoint": f"{root}/{env.tenant}/j/model.safetensors"}}))
    (out / "analysis.json").write_text(json.dumps({"checkpoint": f"{root}/x.safetensors"}))
    relative_json_files(out, root)
    assert json.loads((out / "compare.json").read_text()) == {
        "base": {"checkpoint": f"{env.tenant}/j/model.safetensors"}
    }
    assert str(root) in (out / "analysis.json").read_text()  # read back by path by later stages: left as written


@pytest.mark.parametrize(
    ("params", "field", "limit"),
    [
        ({"compare": {"latency_repeats": 10**9}}, ["compare", "latency_repeats"], "1000"),
        ({"compare": {"latency_warmup": 10**9}}, ["compare", "latency_warmup"], "100"),
        ({"compare": {"latency_batches": [10**9]}}, ["compare", "latency_batches", 0], "1024"),
        ({"compare": {"latency_batches": [-5, 0]}}, ["compare", "latency_batches", 0], "1"),
        ({"compare": {"latency_batches": [1] * 10_000}}, ["compare", "latency_batches"], "8"),
    ],
)
def test_work_a_request_asks_for_is_bounded(env, params, field, limit):
    """Every amount of work is bounded: a 422 naming the field and its limit, nothing queued."""
    model = env.model()
    body = {"params": {"kind": "compare", "base": {"model_id": model}, "slim": {"model_id": model}, **params}}
    response = env.client.post("/v1/jobs", json=body, headers=env.headers)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "params", "compare", *field] and limit in detail["msg"]
    assert env.dispatcher.sent == []


@pytest.mark.parametrize(
    ("kind", "section", "field", "value"),
    [
        ("analyze", "analyze", "batch_size", 10**9),
        ("analyze", "analyze", "max_probes", 10**9),
        ("explain", "explain", "batch_size", 10**9),
        ("explain", "explain", "scorecam_batch_size", 10**9),
        ("explain", "explain", "seed", 10**30),
    ],
)
def test_batch_sizes_and_seeds_are_bounded(env, kind, section, field, value):
    body = {"params": {"kind": kind, "model": {"model_id": env.model()}, section: {field: value}}}
    response = env.client.post("/v1/jobs", json=body, headers=env.headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == field


def test_a_tenant_cannot_fill_the_queues(postgres_url, tmp_path):
    """Past LAYERCUT_TENANT_MAX_ACTIVE_JOBS unfinished jobs, a submit is a 429 with Retry-After; another tenant is
    not affected, a repeated request still gets what it made, and room frees up as jobs end."""
    env = make_env(postgres_url, tmp_path, tenant_max_active_jobs=3)
    model = env.model()
    analyze = {"params": {"kind": "analyze", "model": {"model_id": model}}}
    made = [env.client.post("/v1/jobs", json=analyze, headers=env.headers) for _ in range(3)]
    assert [r.status_code for r in made] == [201, 201, 201]
    refused = env.client.post("/v1/jobs", json=analyze, headers=env.headers)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert "3 unfinished jobs" in refused.json()["detail"] and "LAYERCUT_TENANT_MAX_ACTIVE_JOBS" in refused.text
    pipeline = env.client.post("/v1/pipelines", json={"model_id": model}, headers=env.headers)
    assert pipeline.status_code == 429  # its steps count too
    other_model = env.model(env.other_tenant)
    other = {"params": {"kind": "analyze", "model": {"model_id": other_model}}}
    assert env.client.post("/v1/jobs", json=other, headers=env.other_headers).status_code == 201
    assert env.client.post(f"/v1/jobs/{made[0].json()['id']}/cancel", headers=env.headers).status_code == 200
    again = env.client.post("/v1/jobs", json=analyze, headers={**env.headers, "Idempotency-Key": "k1"})
    assert again.status_code == 201  # a cancelled (queued) job frees its place
    repeated = env.client.post("/v1/jobs", json=analyze, headers={**env.headers, "Idempotency-Key": "k1"})
    assert repeated.status_code == 200 and repeated.json()["id"] == again.json()["id"]
    env.client.close()


def test_failed_authentications_are_rate_limited_per_address(postgres_url, tmp_path):
    env = make_env(postgres_url, tmp_path, auth_failures_per_minute=5)
    wrong = {"Authorization": "Bearer lc_wrong"}
    answers = [env.client.get("/v1/jobs", headers=wrong).status_code for _ in range(8)]
    assert answers == [401] * 5 + [429] * 3
    limited = env.client.get("/v1/jobs", headers=env.headers)  # the address is limited, whatever key it sends now
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "too many failed authentications" in limited.json()["detail"]
    env.client.close()


def test_the_failure_window_slides():
    from layercut.api.limits import FailedAuthentications

    now = [0.0]
    failed = FailedAuthentications(clock=lambda: now[0])
    for _ in range(3):
        failed.record("10.0.0.7")
    assert failed.wait_seconds("10.0.0.7", 3) == 60 and failed.wait_seconds("10.0.0.8", 3) == 0
    now[0] = 45.0
    assert failed.wait_seconds("10.0.0.7", 3) == 15
    now[0] = 60.5
    assert failed.wait_seconds("10.0.0.7", 3) == 0


def _batch_that_fits(response) -> int:
    message = response.json()["detail"][0]["msg"]
    return int(message.split("a batch_size of ")[1].split(" ")[0])


def test_training_that_cannot_fit_a_worker_is_refused_at_submit_with_the_batch_that_fits(env):
    """VGG-16 at 512 px in batches of 256 would need about 90 GiB: refused (422 naming the batch size, the parts of
    the estimate and the setting) before anything is queued; the batch size the answer names is accepted."""
    from layercut.contracts.memory import training_memory

    dataset = env.dataset()
    body = {
        "kind": "train",
        "arch": "vgg16",
        "data": {"dataset_id": dataset, "image_size": 512},
        "train": {"batch_size": 256},
    }
    refused = env.client.post("/v1/jobs", json={"params": body}, headers=env.headers)
    assert refused.status_code == 422, refused.text
    error = refused.json()["detail"][0]
    assert error["loc"] == ["body", "params", "train", "batch_size"] and error["type"] == "too_large"
    assert "LAYERCUT_WORKER_MEMORY_MB" in error["msg"] and "256 image(s)" in error["msg"]
    fits = _batch_that_fits(refused)
    limit = env.settings.worker_memory_mb * 2**20
    assert (
        training_memory("vgg16", 512, fits, "adam").total
        <= limit
        < training_memory("vgg16", 512, fits + 1, "adam").total
    )
    with env.session() as s:
        assert s.query(Job).filter(Job.tenant == env.tenant).count() == 0  # nothing queued
    body["train"]["batch_size"] = fits
    assert env.client.post("/v1/jobs", json={"params": body}, headers=env.headers).status_code == 201

    pipeline = {"data": {"dataset_id": dataset, "image_size": 512}, "arch": "vgg16", "train": {"batch_size": 256}}
    refused = env.client.post("/v1/pipelines", json=pipeline, headers=env.headers)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "train", "batch_size"]
    pipeline["train"]["batch_size"] = fits
    pipeline["retrain"] = {"batch_size": 256}
    refused = env.client.post("/v1/pipelines", json=pipeline, headers=env.headers)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "retrain", "batch_size"]


@pytest.mark.parametrize(
    ("section", "field", "too_big", "enough", "says"),
    [
        ("analyze", "memory_budget_mb", 1024, 8192, "the analysis may use 1024 MiB"),
        ("explain", "batch_size", 64, None, "explaining resnet152 at 1024 px in batches of 64"),
    ],
)
def test_an_analysis_or_explanations_that_cannot_fit_are_refused_at_submit(env, section, field, too_big, enough, says):
    """ResNet-152 at 1024 px: one probe image's graph does not fit a 1 GiB analysis budget, and explanations in
    batches of 64 do not fit a worker; the answer names the field, and what it proposes is accepted."""
    pipeline = {
        "data": {"dataset_id": env.dataset(), "image_size": 1024},
        "arch": "resnet152",
        "train": {"batch_size": 2},
        "analyze": {"memory_budget_mb": 8192},
        "explain": {"batch_size": 1},
    }
    pipeline[section][field] = too_big
    refused = env.client.post("/v1/pipelines", json=pipeline, headers=env.headers)
    assert refused.status_code == 422, refused.text
    error = refused.json()["detail"][0]
    assert error["loc"] == ["body", section, field] and says in error["msg"], error
    pipeline[section][field] = enough if enough is not None else _batch_that_fits(refused)
    assert env.client.post("/v1/pipelines", json=pipeline, headers=env.headers).status_code == 201


def test_the_memory_check_can_be_turned_off_and_skips_what_it_cannot_estimate(postgres_url, tmp_path):
    env = make_env(postgres_url, tmp_path, worker_memory_mb=0)
    try:
        body = {
            "kind": "train",
            "arch": "vgg16",
            "data": {"dataset_id": env.dataset(), "image_size": 512},
            "train": {"batch_size": 256},
        }
        assert env.client.post("/v1/jobs", json={"params": body}, headers=env.headers).status_code == 201
    finally:
        env.client.close()
