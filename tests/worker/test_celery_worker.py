"""A real Celery worker process on real Redis and Postgres: a linked pipeline, redelivery, cancellation,
and a Redis restart that loses every queued message."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from layercut.artifacts import file_sha256
from layercut.jobs.dispatch import CeleryDispatcher, DispatchError
from layercut.jobs.runner import execute_job
from layercut.store.models import Artifact, Job, ModelVersion, Pipeline
from layercut.testing import services
from layercut.testing.commands import free_port
from layercut.testing.workers import (
    TINY_ANALYZE,
    TINY_COMPARE,
    TINY_TRAIN,
    Worker,
    add_dataset,
    add_job,
    create_pipeline_jobs,
    flush_broker,
    job_row,
    session_for,
    settings_from,
    status_of,
    train_params,
    wait_for,
)

BROKER_DB = 5


@pytest.fixture(scope="module")
def artifact_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def env(worker_env, artifact_root) -> dict[str, str]:
    return worker_env(BROKER_DB, artifact_root, worker_metrics_port=free_port())


@pytest.fixture(scope="module")
def worker(env, tmp_path_factory):
    flush_broker(env["LAYERCUT_BROKER_URL"])
    process = Worker(env, tmp_path_factory.mktemp("logs") / "worker.log", "pipeline").wait_ready()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def settings(env):
    return settings_from(env)


@pytest.fixture(scope="module")
def dispatcher(settings) -> CeleryDispatcher:
    return CeleryDispatcher(settings)


def test_pipeline_of_linked_jobs_runs_to_success(worker, env, settings, dispatcher, postgres_url, artifact_root):
    tenant = "t-pipeline"
    dataset_id = add_dataset(postgres_url, tenant)
    steps = [
        ("train", train_params(dataset_id)),
        ("analyze", {"kind": "analyze", "model": {"from_job": "$step:0"}, "analyze": TINY_ANALYZE}),
        (
            "truncate",
            {
                "kind": "truncate",
                "model": {"from_job": "$step:0"},
                "truncate": {"cut": "knee"},
                "analysis_job": "$step:1",
            },
        ),
        ("retrain", {"kind": "retrain", "model": {"from_job": "$step:2"}, "train": TINY_TRAIN}),
        (
            "compare",
            {
                "kind": "compare",
                "base": {"from_job": "$step:0"},
                "slim": {"from_job": "$step:3"},
                "compare": TINY_COMPARE,
            },
        ),
        (
            "explain",
            {
                "kind": "explain",
                "model": {"from_job": "$step:0"},
                "compare_with": {"from_job": "$step:3"},
                "explain": {"images": 2, "feature_maps": 2},
            },
        ),
    ]
    with session_for(postgres_url) as session:
        pipeline = Pipeline(tenant=tenant, params={})
        session.add(pipeline)
        session.flush()
        jobs = create_pipeline_jobs(session, tenant, pipeline, steps)
        session.commit()
        ids, pipeline_id = [j.id for j in jobs], pipeline.id
    dispatcher.dispatch(ids[0], "train")
    assert job_row(postgres_url, ids[0]).dispatched_at is not None

    def pipeline_done():
        with session_for(postgres_url) as session:
            status = session.get(Pipeline, pipeline_id, populate_existing=True).status
            return status if status in ("succeeded", "failed", "cancelled") else None

    started = time.monotonic()
    status = wait_for(pipeline_done, 150, 0.5, "the pipeline to end")
    elapsed = time.monotonic() - started
    rows = [job_row(postgres_url, i) for i in ids]
    assert status == "succeeded", [(r.kind, r.status, r.error_code, r.error_message) for r in rows] + [worker.tail()]
    print(f"pipeline of {len(rows)} jobs took {elapsed:.1f}s")

    for row in rows:
        assert row.status == "succeeded" and row.progress == 1.0 and row.stage is not None, row.kind
        assert row.attempts == 1 and row.finished_at >= row.started_at and row.worker.startswith("pipeline@")
    train, analyze, truncate, retrain, compare, explain = rows
    _check_what_an_operator_sees(env, artifact_root, worker, rows, pipeline_id, tenant)
    assert explain.result["figures"] and explain.result["methods"]
    assert truncate.result["chosen_by"] == "knee"
    assert truncate.result["cut_point"]["name"] == analyze.result["cut_point"]["name"]
    assert "similarity_matrix" in analyze.result and compare.result["comparison"]

    with session_for(postgres_url) as session:
        models = {m.job_id: m for m in session.scalars(select(ModelVersion).where(ModelVersion.tenant == tenant))}
        assert set(models) == {train.id, truncate.id, retrain.id}
        base, cut, slim = models[train.id], models[truncate.id], models[retrain.id]
        assert base.trained and base.parent_id is None and base.dataset_id == dataset_id and base.cut_point is None
        assert (
            not cut.trained
            and cut.parent_id == base.id
            and cut.cut_point["name"] == truncate.result["cut_point"]["name"]
        )
        assert slim.trained and slim.parent_id == base.id and slim.cut_point == cut.cut_point
        assert slim.params < base.params and slim.dataset_id == dataset_id
        assert train.result["model_id"] == str(base.id) and retrain.result["model_id"] == str(slim.id)
        assert "model_id" not in analyze.result

        artifacts = session.scalars(select(Artifact).where(Artifact.tenant == tenant)).all()
        by_job: dict[uuid.UUID, dict[str, Artifact]] = {}
        for artifact in artifacts:
            by_job.setdefault(artifact.job_id, {})[Path(artifact.path).name] = artifact
            path = artifact_root / artifact.path
            assert path.is_file() and path.stat().st_size == artifact.bytes and file_sha256(path) == artifact.sha256
            assert artifact.path.startswith(f"{tenant}/{artifact.job_id}/")
        assert by_job[train.id]["model.safetensors"].kind == "checkpoint"
        assert by_job[train.id]["metrics.json"].content_type == "application/json"
        assert by_job[analyze.id]["analysis.json"].kind == "analysis"
        assert by_job[analyze.id]["ssim_curve.png"].content_type == "image/png"
        assert by_job[compare.id]["compare.json"].kind == "report"
        assert base.checkpoint == by_job[train.id]["model.safetensors"].path
        assert {name for name in by_job[explain.id]} >= {"explain.json", *explain.result["figures"].values()}
        # no absolute server paths leak into results
        assert str(artifact_root) not in str(train.result)

    # The pipeline's report, as the API serves it, shows every step's outputs, explanations included.
    from fastapi.testclient import TestClient

    from layercut.api.main import create_app
    from layercut.store.keys import create_key

    with session_for(postgres_url) as session:
        _, key = create_key(session, tenant)
    with TestClient(create_app(settings, run_embedded_jobs=False)) as client:
        page = client.get(f"/v1/pipelines/{pipeline_id}/report", headers={"Authorization": f"Bearer {key}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "not run yet" not in page.text.lower() and page.text.count("data:image/png;base64,") >= 10
    assert 'id="explanations"' in page.text or "Explanations" in page.text


def _check_what_an_operator_sees(env, artifact_root, worker, rows, pipeline_id, tenant) -> None:
    """The worker's JSON log lines carry each job's ids and say when it started and ended; each job's own lines are
    in its log file; the worker's /metrics has every run's duration (summed over its pool processes)."""
    lines = [json.loads(line) for line in worker.tail(10**7).splitlines() if line.startswith("{")]
    for row in rows:
        mine = [line for line in lines if line.get("job_id") == str(row.id)]
        said = [line["message"] for line in mine]
        assert any(m.startswith(f"job started: {row.kind}") for m in said), (row.kind, said)
        assert any(m.startswith("job succeeded after") for m in said), (row.kind, said)
        assert all(line["pipeline_id"] == str(pipeline_id) and line["tenant"] == tenant for line in mine)
        own = (artifact_root / tenant / "logs" / f"{row.id}.log").read_text().splitlines()
        assert [json.loads(line)["message"] for line in own] == said
    port = env["LAYERCUT_WORKER_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts = {
        (sample.labels["kind"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "layercut_job_duration_seconds_count"
    }
    for row in rows:
        assert counts.get((row.kind, "succeeded"), 0) >= 1, (row.kind, counts)


def test_redelivered_message_does_nothing(worker, settings, postgres_url):
    with session_for(postgres_url) as session:
        done = session.scalars(select(Job).where(Job.status == "succeeded", Job.kind == "train")).first()
        assert done is not None
        before = (done.finished_at, done.attempts, done.result, done.updated_at)
    assert execute_job(done.id, settings, worker_name="redelivery") == "succeeded"
    after = job_row(postgres_url, done.id)
    assert (after.finished_at, after.attempts, after.result, after.updated_at) == before
    assert after.worker != "redelivery"


def test_cancel_a_running_job(worker, dispatcher, postgres_url):
    from layercut.store.jobs import JobRepository

    tenant = "t-cancel"
    job_id = add_job(postgres_url, tenant, train_params(add_dataset(postgres_url, tenant), epochs=200))
    dispatcher.dispatch(job_id, "train")

    def training():
        row = job_row(postgres_url, job_id)
        return row.status == "running" and row.stage == "train" and row.progress > 0.1

    wait_for(training, 60, what="the job to train")
    asked = time.monotonic()
    with session_for(postgres_url) as session:
        assert JobRepository(session).request_cancel(job_id) == "cancelling"
    wait_for(lambda: status_of(postgres_url, job_id) == "cancelled", 15, what="the job to end cancelled")
    print(f"cancelled {time.monotonic() - asked:.1f}s after the request")
    row = job_row(postgres_url, job_id)
    assert row.finished_at is not None and row.error_code is None and row.progress < 1.0


def test_redis_restart_loses_no_queued_job(worker, settings, dispatcher, postgres_url, redis_url):
    """Redis keeps nothing on disk here: every queued message is lost; the reaper re-sends them from Postgres."""
    import redis as redis_lib

    tenant = "t-redis"
    dataset_id = add_dataset(postgres_url, tenant)
    blocker = add_job(postgres_url, tenant, train_params(dataset_id, epochs=30))  # busy while Redis restarts
    queued = [add_job(postgres_url, tenant, train_params(dataset_id)) for _ in range(2)]
    dispatcher.dispatch(blocker, "train")
    wait_for(lambda: status_of(postgres_url, blocker) == "running", 30, what="the first job to start")
    for job_id in queued:
        dispatcher.dispatch(job_id, "train")
    assert dispatcher.waiting() == set(queued)  # the two messages wait in Redis behind the running job

    redis_lib.Redis.from_url(redis_url).shutdown(nosave=True)
    wait_for(lambda: not services.redis_up(), 10, what="Redis to stop")
    try:
        late = add_job(postgres_url, tenant, train_params(dataset_id))
        with pytest.raises(DispatchError):  # a send while the broker is down fails fast, the row stays queued
            CeleryDispatcher(settings).dispatch(late, "train")
        assert job_row(postgres_url, late).dispatched_at is None
    finally:
        services.start_redis()
        wait_for(services.redis_up, 20, what="Redis to start again")
    # The restart wiped Redis; a message the worker held unacknowledged may be restored by it on reconnect,
    # the others come back through the reaper re-sending from Postgres. Either way none may be lost:

    everything = [blocker, *queued, late]
    wait_for(
        lambda: all(status_of(postgres_url, j) in ("succeeded", "failed", "cancelled") for j in everything),
        150,
        0.5,
        "every job to end after the Redis restart",
    )
    statuses = {j: (job_row(postgres_url, j).status, job_row(postgres_url, j).error_message) for j in everything}
    assert all(s == "succeeded" for s, _ in statuses.values()), (statuses, worker.tail())
