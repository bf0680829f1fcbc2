"""Fair share between tenants on real Celery workers: a tenant that queued many jobs first does not make another
tenant's job wait behind all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from layercut.jobs.dispatch import CeleryDispatcher
from layercut.testing.workers import (
    Worker,
    add_dataset,
    add_job,
    flush_broker,
    job_row,
    settings_from,
    train_params,
    wait_for,
)

BROKER_DB = 9
FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def artifact_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts-fair")


def test_a_tenant_with_many_queued_jobs_does_not_starve_another(worker_env, artifact_root, postgres_url, tmp_path):
    env = worker_env(BROKER_DB, artifact_root)  # fair scheduling is the default
    flush_broker(env["LAYERCUT_BROKER_URL"])
    busy = [
        add_job(postgres_url, "t-busy", train_params(add_dataset(postgres_url, "t-busy"), epochs=2)) for _ in "1234"
    ]
    other = add_job(postgres_url, "t-other", train_params(add_dataset(postgres_url, "t-other"), epochs=2))
    dispatcher = CeleryDispatcher(settings_from(env))
    for job_id in busy:
        dispatcher.dispatch(job_id, "train")
    dispatcher.dispatch(other, "train")  # queued behind the busy tenant's four
    workers = [Worker(env, tmp_path / f"fair-{i}.log", f"fair-{i}").wait_ready() for i in range(2)]
    try:
        rows = wait_for(
            lambda: (
                all(job_row(postgres_url, j).status in FINAL for j in [*busy, other])
                and [job_row(postgres_url, j) for j in [*busy, other]]
            ),
            180,
            0.5,
            "every job to end",
        )
    finally:
        for worker in workers:
            worker.stop()
    *busy_rows, other_row = rows
    assert all(r.status == "succeeded" for r in rows), [(r.status, r.error_message) for r in rows]
    starts = sorted(r.started_at for r in busy_rows)
    # the other tenant's job started before the busy tenant's second one: it did not wait behind all four
    assert other_row.started_at < starts[1], (other_row.started_at, starts)
    assert other_row.deferred_at is None and any(r.deferred_at is not None for r in busy_rows)
    # while the other tenant waited, the busy tenant never ran two jobs at once
    first_end = min(r.finished_at for r in busy_rows)
    assert sum(r.started_at < other_row.started_at for r in busy_rows) == 1 and first_end > starts[0]
