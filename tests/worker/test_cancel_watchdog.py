"""The cancel watchdog: a job whose stage ignores its cancellation points is ended ``cancelled`` after the grace
period and its worker process is stopped (as a Celery pool process is; the pool starts another)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.store.models import Job

STUBBORN_WORKER = textwrap.dedent(
    """
    import sys, time
    from layercut.jobs import stage
    from layercut.jobs.runner import end_this_process, execute_job
    from layercut.settings import Settings

    def stubborn(params, run):  # a stage that never reaches a cancellation point
        while True:
            time.sleep(0.05)

    stage.STAGE_RUNNERS["train"] = stubborn
    print(execute_job(sys.argv[1], Settings(), stop_process=end_this_process), flush=True)
    """
)


def status_of(url: str, job_id: uuid.UUID) -> str | None:
    with get_sessionmaker(url)() as session:
        job = session.get(Job, job_id)
        return job.status if job else None


def test_a_job_that_ignores_its_cancel_is_ended_after_the_grace_period(postgres_url, worker_env, tmp_path):
    job_id = uuid.uuid4()
    with get_sessionmaker(postgres_url)() as session:
        session.add(
            Job(
                id=job_id,
                tenant="watchdog",
                kind="train",
                status="queued",
                params={"kind": "train", "data": {"dataset_id": str(uuid.uuid4())}},
            )
        )
        session.commit()
    env = worker_env(15, tmp_path / "artifacts", heartbeat_seconds=0.2, cancel_grace_seconds=1.0)
    worker = subprocess.Popen(
        [sys.executable, "-c", STUBBORN_WORKER, str(job_id)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while status_of(postgres_url, job_id) != "running":
            assert time.monotonic() < deadline and worker.poll() is None, "the job never started"
            time.sleep(0.1)
        with get_sessionmaker(postgres_url)() as session:
            assert JobRepository(session).request_cancel(job_id) == "cancelling"
        asked = time.monotonic()
        returncode = worker.wait(timeout=30)
        waited = time.monotonic() - asked
    finally:
        if worker.poll() is None:
            worker.kill()
    assert returncode == -9  # the process was stopped: nothing else would have ended the stage
    assert 1.0 <= waited < 15, waited  # not before the grace period, and soon after it
    assert status_of(postgres_url, job_id) == "cancelled"
    with get_sessionmaker(postgres_url)() as session:
        assert session.get(Job, job_id).finished_at is not None
