"""A database that drops every connection while a job runs costs that job nothing: progress writes that fail are
skipped, the final status is written once the database answers again, and pooled connections that died are
replaced at checkout (pre-ping)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from layercut.contracts.results import TruncateResult
from layercut.jobs import stage
from layercut.jobs.progress import through_outages
from layercut.jobs.runner import execute_job
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.testing.workers import add_dataset, add_job, train_params

TENANT = "t-blips"


def drop_every_connection(url: str) -> int:
    """What a database restart does to its clients: every other connection to the database is closed."""
    admin = create_engine(url, poolclass=None, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        dropped = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    admin.dispose()
    return int(dropped)


def test_a_job_survives_its_connections_being_dropped_mid_run_and_at_the_end(postgres_url, tmp_path, monkeypatch):
    settings = Settings(
        database_url=postgres_url,
        broker_url="redis://127.0.0.1:6379/7",
        artifact_root=tmp_path,
        progress_interval_seconds=0.0,
        heartbeat_seconds=0.2,
    )
    drops = []

    def blinking_stage(params, run):
        run.reporter.update("train", 0.2, "before the blip")
        drops.append(drop_every_connection(postgres_url))
        run.reporter.update("train", 0.5, "during the blip")  # a write on a dead connection: skipped
        run.reporter.update("train", 0.8, "after the blip")
        drops.append(drop_every_connection(postgres_url))  # and once more before the result is recorded
        return stage.StageOutcome(
            TruncateResult(
                stage="truncate",
                checkpoint="none",
                cut_point={"index": 0, "name": "x"},
                chosen_by="user",
                base_params=2,
                slim_params=1,
                params_kept=0.5,
                cut_points_total=1,
            )
        )

    monkeypatch.setitem(stage.STAGE_RUNNERS, "train", blinking_stage)
    job_id = add_job(postgres_url, TENANT, train_params(add_dataset(postgres_url, TENANT)))
    assert execute_job(job_id, settings, "blinking") == "succeeded"
    assert all(count >= 1 for count in drops)  # the job's own connections were among those dropped
    with get_sessionmaker(postgres_url)() as session:
        job = JobRepository(session).get(job_id)
        assert job.status == "succeeded" and job.result["slim_params"] == 1 and job.error_code is None


def test_through_outages_retries_for_its_time_then_gives_up(postgres_url):
    with get_sessionmaker(postgres_url)() as session:
        calls = []

        def flaky():
            calls.append(time.monotonic())
            if len(calls) < 3:
                raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection"))
            return "written"

        assert through_outages(session, flaky, 5.0, "a write") == "written" and len(calls) == 3

        def down():
            raise OperationalError("UPDATE jobs", {}, Exception("connection refused"))

        started = time.monotonic()
        with pytest.raises(OperationalError):
            through_outages(session, down, 0.5, "a write")
        assert 0.3 <= time.monotonic() - started < 2.0
