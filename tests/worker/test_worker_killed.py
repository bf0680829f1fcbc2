"""A worker killed with SIGKILL mid-job (the whole process group, as a lost machine): the heartbeat stops, the
reaper in the next worker re-queues and re-sends the job, or fails it with ``worker_lost`` once out of attempts.
Also: Celery's soft time limit ends a job failed with code ``time_limit``."""

from __future__ import annotations

import os
import signal
import time
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

BROKER_DB = 6


@pytest.fixture(scope="module")
def artifact_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts-killed")


def _kill_mid_job(env: dict, postgres_url: str, log_dir: Path, tenant: str, epochs: int):
    """Start a worker, send a training job, SIGKILL the worker's process group while it trains."""
    flush_broker(env["LAYERCUT_BROKER_URL"])
    job_id = add_job(postgres_url, tenant, train_params(add_dataset(postgres_url, tenant), epochs=epochs))
    first = Worker(env, log_dir / f"{tenant}-first.log", f"{tenant}-first").wait_ready()
    try:
        CeleryDispatcher(settings_from(env)).dispatch(job_id, "train")

        def training():
            row = job_row(postgres_url, job_id)
            return row.status == "running" and row.stage == "train" and row.progress > 0.1

        wait_for(training, 60, what="the job to train")
    finally:
        first.kill()
    assert job_row(postgres_url, job_id).status == "running"  # nobody told the database
    return job_id


def test_killed_worker_job_is_requeued_and_succeeds(worker_env, artifact_root, postgres_url, tmp_path):
    env = worker_env(BROKER_DB, artifact_root, max_attempts=3)
    job_id = _kill_mid_job(env, postgres_url, tmp_path, "t-kill", epochs=15)
    killed_at = time.monotonic()
    second = Worker(env, tmp_path / "second.log", "t-kill-second").wait_ready()
    try:
        row = wait_for(
            lambda: (r := job_row(postgres_url, job_id)).status in ("succeeded", "failed", "cancelled") and r,
            120,
            0.5,
            "the re-queued job to end",
        )
        print(f"re-run to {row.status} {time.monotonic() - killed_at:.1f}s after the kill")
        assert row.status == "succeeded", (row.error_code, row.error_message, second.tail())
        assert row.attempts == 2 and row.worker.startswith("t-kill-second@") and row.progress == 1.0
    finally:
        second.stop()


def test_killed_worker_out_of_attempts_fails_worker_lost(worker_env, artifact_root, postgres_url, tmp_path):
    env = worker_env(BROKER_DB, artifact_root, max_attempts=1)
    job_id = _kill_mid_job(env, postgres_url, tmp_path, "t-lost", epochs=50)
    killed_at = time.monotonic()
    second = Worker(env, tmp_path / "second.log", "t-lost-second").wait_ready()
    try:
        row = wait_for(
            lambda: (r := job_row(postgres_url, job_id)).status != "running" and r,
            30,
            0.3,
            "the reaper to give up on the job",
        )
        print(f"failed {time.monotonic() - killed_at:.1f}s after the kill")
        assert row.status == "failed" and row.error_code == "worker_lost", (row.status, second.tail())
        assert (
            "stopped answering" in row.error_message
            and "giving up after 1 attempts" in row.error_message
            and row.finished_at is not None
            and row.attempts == 1
        )
    finally:
        second.stop()


def test_soft_time_limit_fails_the_job_with_time_limit(worker_env, artifact_root, postgres_url, tmp_path):
    env = worker_env(BROKER_DB, artifact_root, task_soft_time_limit=8, task_hard_time_limit=60)
    flush_broker(env["LAYERCUT_BROKER_URL"])
    job_id = add_job(postgres_url, "t-limit", train_params(add_dataset(postgres_url, "t-limit"), epochs=500))
    worker = Worker(env, tmp_path / "limit.log", "t-limit").wait_ready()
    try:
        CeleryDispatcher(settings_from(env)).dispatch(job_id, "train")
        row = wait_for(
            lambda: (r := job_row(postgres_url, job_id)).status not in ("queued", "running") and r,
            60,
            0.3,
            "the time limit to end the job",
        )
        assert row.status == "failed" and row.error_code == "time_limit", (row.status, row.error_message, worker.tail())
        assert row.finished_at is not None
    finally:
        worker.stop()


def test_a_killed_pool_process_is_replaced_and_its_job_rerun_at_once(worker_env, artifact_root, postgres_url, tmp_path):
    """Only the pool process running the job dies (the OOM killer, a crash in native code): Celery re-delivers the
    message, and the worker that gets it sees the recorded process is gone and runs the job again at once, long
    before the heartbeat timeout (here 10 minutes, so the reaper cannot be what re-runs it)."""
    env = worker_env(BROKER_DB, artifact_root, max_attempts=3, stale_after_seconds=600)
    flush_broker(env["LAYERCUT_BROKER_URL"])
    job_id = add_job(postgres_url, "t-child", train_params(add_dataset(postgres_url, "t-child"), epochs=15))
    worker = Worker(env, tmp_path / "child.log", "t-child").wait_ready()
    try:
        CeleryDispatcher(settings_from(env)).dispatch(job_id, "train")
        running = wait_for(
            lambda: (r := job_row(postgres_url, job_id)).status == "running" and r.progress > 0.1 and r,
            60,
            what="the job to train",
        )
        os.kill(int(running.worker.rpartition(":")[2]), signal.SIGKILL)  # the pool process, not the worker
        killed_at = time.monotonic()
        row = wait_for(
            lambda: (r := job_row(postgres_url, job_id)).status in ("succeeded", "failed", "cancelled") and r,
            120,
            0.5,
            "the job to run again and end",
        )
        rerun_after = time.monotonic() - killed_at
        print(f"re-run to {row.status} {rerun_after:.1f}s after the pool process was killed")
        assert row.status == "succeeded" and row.attempts == 2, (row.status, row.error_message, worker.tail())
        assert row.worker != running.worker and row.worker.startswith("t-child@")
        assert rerun_after < 120 and "died" in worker.tail(10**6)
    finally:
        worker.stop()


def test_only_a_process_of_this_machine_known_dead_counts_as_gone():
    import socket
    import subprocess

    from layercut.jobs.runner import holder_is_gone

    ended = subprocess.Popen(["true"])
    ended.wait()
    host = socket.gethostname()
    assert holder_is_gone(f"w@{host}:{ended.pid}") and holder_is_gone(f"{host}:{ended.pid}")
    assert not holder_is_gone(f"w@{host}:{os.getpid()}")  # alive
    assert not holder_is_gone(f"w@another-{host}:{ended.pid}")  # another machine: the heartbeat decides
    assert not holder_is_gone(None) and not holder_is_gone("nonsense") and not holder_is_gone(f"{host}:pid")
