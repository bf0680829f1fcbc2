"""A sweep in the service fans out: two real Celery workers retrain the cut points in parallel, one job gathers them,
and cancelling one cut point cancels the rest of the pipeline."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from layercut.jobs.dispatch import CeleryDispatcher
from layercut.store.jobs import JobRepository
from layercut.store.models import FINAL_STATUSES, Job, ModelVersion, Pipeline
from layercut.testing.workers import (
    TINY_ANALYZE,
    TINY_TRAIN,
    Worker,
    add_dataset,
    create_pipeline_jobs,
    flush_broker,
    session_for,
    settings_from,
    train_params,
    wait_for,
)

BROKER_DB = 7
SMALLCNN_CUT_POINTS = 4


@pytest.fixture(scope="module")
def artifact_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def env(worker_env, artifact_root) -> dict[str, str]:
    return worker_env(BROKER_DB, artifact_root)


@pytest.fixture(scope="module")
def workers(env, tmp_path_factory):
    flush_broker(env["LAYERCUT_BROKER_URL"])
    logs = tmp_path_factory.mktemp("logs")
    started = [Worker(env, logs / f"{name}.log", name) for name in ("fan-a", "fan-b")]
    try:
        yield [worker.wait_ready() for worker in started]
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture(scope="module")
def settings(env):
    return settings_from(env)


@pytest.fixture(scope="module")
def dispatcher(settings) -> CeleryDispatcher:
    return CeleryDispatcher(settings)


def start_sweep(postgres_url: str, dispatcher: CeleryDispatcher, tenant: str, retrain: dict) -> uuid.UUID:
    """train → analyze → sweep_plan (every cut point of smallcnn), as the API plans a pipeline with a sweep."""
    dataset_id = add_dataset(postgres_url, tenant)
    steps = [
        ("train", train_params(dataset_id)),
        ("analyze", {"kind": "analyze", "model": {"from_job": "$step:0"}, "analyze": TINY_ANALYZE}),
        (
            "sweep_plan",
            {
                "kind": "sweep_plan",
                "model": {"from_job": "$step:0"},
                "analysis_job": "$step:1",
                "sweep": {"cuts": "all"},
                "train": retrain,
            },
        ),
    ]
    with session_for(postgres_url) as session:
        pipeline = Pipeline(tenant=tenant, params={})
        session.add(pipeline)
        session.flush()
        jobs = create_pipeline_jobs(session, tenant, pipeline, steps)
        session.commit()
        first, pipeline_id = jobs[0].id, pipeline.id
    dispatcher.dispatch(first, "train")
    return pipeline_id


def pipeline_jobs(postgres_url: str, pipeline_id: uuid.UUID) -> list[Job]:
    with session_for(postgres_url) as session:
        return list(session.scalars(select(Job).where(Job.pipeline_id == pipeline_id).order_by(Job.created_at)))


def pipeline_status(postgres_url: str, pipeline_id: uuid.UUID) -> str | None:
    with session_for(postgres_url) as session:
        status = session.get(Pipeline, pipeline_id, populate_existing=True).status
        return status if status in FINAL_STATUSES else None


def overlapping(a: Job, b: Job) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_a_sweep_runs_its_cut_points_on_both_workers_at_once_and_gathers_them(
    workers, dispatcher, postgres_url, artifact_root
):
    pipeline_id = start_sweep(postgres_url, dispatcher, "t-sweep", {**TINY_TRAIN, "epochs": 2})
    status = wait_for(lambda: pipeline_status(postgres_url, pipeline_id), 300, 0.5, "the sweep pipeline to end")
    jobs = pipeline_jobs(postgres_url, pipeline_id)
    assert status == "succeeded", [(j.kind, j.status, j.error_message) for j in jobs] + [w.tail() for w in workers]
    by_kind: dict[str, list[Job]] = {}
    for job in jobs:
        by_kind.setdefault(job.kind, []).append(job)
    plan, cuts, (gather,) = by_kind["sweep_plan"][0], by_kind["sweep_cut"], by_kind["sweep"]
    assert len(cuts) == SMALLCNN_CUT_POINTS and all(job.status == "succeeded" for job in jobs)
    assert sorted(job.params["cut"] for job in cuts) == list(range(SMALLCNN_CUT_POINTS))
    assert all(job.depends_on == plan.id for job in cuts)
    assert sorted(gather.waits_for) == sorted(str(job.id) for job in cuts)

    # fanned out: both workers retrained cut points, and at some moment two of them ran at once
    assert {job.worker.split("@")[0] for job in cuts} == {"fan-a", "fan-b"}
    assert any(overlapping(a, b) for a in cuts for b in cuts if a.id != b.id)
    # gathered: the gather started after the last cut point ended and holds every one of them
    assert gather.started_at >= max(job.finished_at for job in cuts)
    assert [c["cut_point"]["index"] for c in gather.result["candidates"]] == list(range(SMALLCNN_CUT_POINTS))
    assert gather.result["base"]["val_accuracy"] == plan.result["base"]["val_accuracy"]
    folder = artifact_root / gather.tenant / str(gather.id)
    assert (folder / "sweep.json").is_file() and (folder / "trade_off.png").stat().st_size > 10_000
    assert gather.result["rules"]["knee"] is not None  # the pipeline's analysis marks the knee
    with session_for(postgres_url) as session:
        made = set(session.scalars(select(ModelVersion.job_id).where(ModelVersion.tenant == "t-sweep")))
    assert {job.id for job in cuts} <= made  # every swept slim model is kept as a model version


def test_cancelling_one_cut_point_cancels_the_others_and_the_gather(workers, dispatcher, postgres_url):
    pipeline_id = start_sweep(postgres_url, dispatcher, "t-sweep-cancel", {**TINY_TRAIN, "epochs": 300})

    def a_cut_point_trains() -> Job | None:
        running = [
            j for j in pipeline_jobs(postgres_url, pipeline_id) if j.kind == "sweep_cut" and j.status == "running"
        ]
        return next((j for j in running if (j.progress or 0) > 0.15), None)

    victim = wait_for(a_cut_point_trains, 180, 0.5, "a cut point to be retraining")
    asked = time.monotonic()
    with session_for(postgres_url) as session:
        JobRepository(session).request_cancel(victim.id)
    status = wait_for(lambda: pipeline_status(postgres_url, pipeline_id), 60, 0.5, "the pipeline to end")
    wait_for(
        lambda: all(j.status in FINAL_STATUSES for j in pipeline_jobs(postgres_url, pipeline_id)),
        60,
        0.5,
        "every job of the pipeline to end",
    )
    print(f"the sweep ended {time.monotonic() - asked:.1f}s after one cut point was cancelled")
    jobs = pipeline_jobs(postgres_url, pipeline_id)
    assert status == "cancelled"
    fanned = [j for j in jobs if j.kind in ("sweep_cut", "sweep")]
    assert len(fanned) == SMALLCNN_CUT_POINTS + 1
    assert all(j.status == "cancelled" for j in fanned), [(j.kind, j.status) for j in fanned]
