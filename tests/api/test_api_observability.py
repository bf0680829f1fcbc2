"""What an operator watches: a request id on every answer and log line, JSON (or text) log lines with the
tenant and the job's ids, a job's own log lines through the API, and Prometheus /metrics on real Postgres."""

from __future__ import annotations

import json
import logging
import os
import re
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from layercut import telemetry
from layercut.jobs.runner import execute_job
from layercut.store.models import Job
from layercut.testing.workers import add_dataset, add_job, session_for, train_params


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text answer by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def console(capsys):
    """The service's log lines as ``configure_logging`` writes them to stderr (pytest's captured stderr while the
    test runs), read back as text; the handler is removed afterwards."""
    written: list[str] = []

    def read() -> str:
        written.append(capsys.readouterr().err)
        return "".join(written)

    yield read
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, telemetry.HANDLER_MARK, False)]:
        root.removeHandler(handler)


def test_the_request_id_is_echoed_or_made(env) -> None:
    assert env.client.get("/healthz", headers={"X-Request-ID": "trace-7.a:b"}).headers["X-Request-ID"] == "trace-7.a:b"
    made = env.client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    for unsafe in ("has space", "x" * 200, "tab\tinside"):
        echoed = env.client.get("/healthz", headers={"X-Request-ID": unsafe}).headers["X-Request-ID"]
        assert echoed != unsafe and re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_each_answer_is_one_json_log_line_with_the_request_id_and_tenant(env, console) -> None:
    telemetry.configure_logging("json", "INFO")
    assert env.client.get("/v1/jobs", headers={**env.headers, "X-Request-ID": "req-json-1"}).status_code == 200
    lines = [json.loads(line) for line in console().splitlines() if line.startswith("{")]
    line = next(entry for entry in lines if entry.get("request_id") == "req-json-1")
    assert line["tenant"] == env.tenant and line["route"] == "/v1/jobs" and line["status"] == 200
    assert line["level"] == "INFO" and line["logger"] == "layercut.api.requests" and line["ms"] >= 0
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$", line["time"])

    telemetry.configure_logging("text", "INFO")  # the one setting that switches to plain lines
    env.client.get("/v1/jobs", headers={**env.headers, "X-Request-ID": "req-text-1"})
    text = [line for line in console().splitlines() if "request=req-text-1" in line]
    assert text and f"tenant={env.tenant}" in text[0] and "GET /v1/jobs 200" in text[0]


def test_metrics_count_answers_by_route_and_jobs_by_status(env) -> None:
    missing = env.client.get(f"/v1/jobs/{uuid.uuid4()}", headers=env.headers)
    assert missing.status_code == 404
    dataset_id = add_dataset(env.url, env.tenant)
    add_job(env.url, env.tenant, train_params(dataset_id))
    answer = env.client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)
    route = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404"))
    assert found[("layercut_http_requests_total", route)] >= 1
    assert found[("layercut_http_request_duration_seconds_count", route[:2])] >= 1
    with session_for(env.url) as session:
        queued = session.scalar(
            select(func.count()).select_from(Job).where(Job.kind == "train", Job.status == "queued")
        )
        waiting_gpu = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.status == "queued",
                Job.kind.in_(["train", "analyze", "retrain", "select", "sweep_cut", "compare", "explain"]),
            )
        )
    assert found[("layercut_jobs", (("kind", "train"), ("status", "queued")))] == queued >= 1
    assert found[("layercut_jobs_waiting", (("queue", "gpu"),))] >= 1 and waiting_gpu >= 1


def test_a_jobs_log_lines_are_read_through_the_api(env) -> None:
    """A job run by the real runner logs its start and end with its ids; GET /v1/jobs/{id}/logs pages through them,
    for its tenant only; the run's duration is in /metrics."""
    job_id = add_job(env.url, env.tenant, train_params(add_dataset(env.url, env.tenant)))
    assert execute_job(job_id, env.settings) == "succeeded"
    answer = env.client.get(f"/v1/jobs/{job_id}/logs", headers=env.headers)
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    messages = [item["message"] for item in items]
    assert messages[0].startswith("job started: train, attempt 1") and messages[-1].startswith("job succeeded after")
    for item in items:
        assert item["fields"]["job_id"] == str(job_id) and item["fields"]["tenant"] == env.tenant
        assert item["level"] in ("INFO", "WARNING") and item["time"]
    assert items[-1]["fields"]["status"] == "succeeded" and items[-1]["fields"]["seconds"] > 0
    first = env.client.get(f"/v1/jobs/{job_id}/logs", params={"limit": 1}, headers=env.headers).json()
    assert [i["message"] for i in first["items"]] == messages[:1] and first["next_offset"] == 1
    rest = env.client.get(f"/v1/jobs/{job_id}/logs", params={"offset": 1}, headers=env.headers).json()
    assert [i["message"] for i in rest["items"]] == messages[1:] and rest["next_offset"] is None
    assert env.client.get(f"/v1/jobs/{job_id}/logs", headers=env.other_headers).status_code == 404
    assert env.client.get(f"/v1/jobs/{job_id}/logs", params={"limit": 5000}, headers=env.headers).status_code == 422
    found = samples(env.client.get("/metrics").text)
    assert found[("layercut_job_duration_seconds_count", (("kind", "train"), ("outcome", "succeeded")))] >= 1
    job = env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).json()
    assert job["metrics"]["accuracy"] == job["result"]["accuracy"] and job["metrics"]["params"] > 0  # headline


SUMMED = """
import os, sys
from layercut import telemetry
assert telemetry.MULTIPROCESS
for _ in range(3):  # three pool processes, one job each
    pid = os.fork()
    if pid == 0:
        telemetry.observe_job("train", "succeeded", 2.0)
        os._exit(0)
    os.waitpid(pid, 0)
from prometheus_client import generate_latest
sys.stdout.write(generate_latest(telemetry.metrics_registry()).decode())
"""


def test_metrics_of_forked_processes_are_summed(tmp_path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set (a Celery worker's pool, uvicorn's processes), /metrics sums every
    process's metrics (the folder is made if missing)."""
    import subprocess
    import sys as system

    folder = tmp_path / "metrics"
    done = subprocess.run(
        [system.executable, "-c", SUMMED],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = samples(done.stdout)
    assert found[("layercut_job_duration_seconds_count", (("kind", "train"), ("outcome", "succeeded")))] == 3
    assert found[("layercut_job_duration_seconds_sum", (("kind", "train"), ("outcome", "succeeded")))] == 6.0


def test_a_quiet_console_still_leaves_the_jobs_own_lines_in_its_file(console, tmp_path) -> None:
    """LAYERCUT_LOG_LEVEL=WARNING quiets stderr, not the job's log file (its start and end lines are INFO)."""
    telemetry.configure_logging("json", "WARNING")
    path = tmp_path / "logs" / "j1.log"
    with telemetry.bound(job_id="j1"), telemetry.job_log_file(path, "j1"):
        logging.getLogger("layercut.jobs.runner").info("job started: train")
        logging.getLogger("layercut.jobs.runner").warning("job failed")
    logging.getLogger("layercut.jobs.runner").info("another job's line")
    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == [
        "job started: train",
        "job failed",
    ]
    shown = console()
    assert "job failed" in shown and "job started" not in shown and "another job" not in shown
