"""The job state machine (JobRepository, compare-and-set) on Postgres, and the runner's refusal to run
jobs it cannot claim or whose dependency has not finished."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from layercut.jobs.runner import execute_job
from layercut.settings import Settings
from layercut.store.jobs import JobRepository
from layercut.store.models import Job, utcnow
from layercut.testing.workers import add_dataset, add_job, session_for, train_params

TENANT = "t-states"


@pytest.fixture
def repo(postgres_url):
    with session_for(postgres_url) as session:
        yield JobRepository(session)


@pytest.fixture
def new_job(postgres_url):
    dataset_id = add_dataset(postgres_url, TENANT)
    return lambda **fields: add_job(postgres_url, TENANT, train_params(dataset_id), **fields)


def test_claim_twice_second_loses(repo, new_job):
    job_id = new_job()
    assert repo.claim(job_id, "w1") is True
    assert repo.claim(job_id, "w2") is False
    job = repo.get(job_id)
    assert job.status == "running" and job.worker == "w1" and job.attempts == 1 and job.heartbeat_at is not None


def test_succeed_only_from_running(repo, new_job):
    job_id = new_job()
    assert repo.succeed(job_id, {"x": 1}) is False and repo.get(job_id).status == "queued"
    repo.claim(job_id, "w")
    assert repo.succeed(job_id, {"x": 1}) is True
    assert repo.succeed(job_id, {"x": 2}) is False and repo.fail(job_id, "e", "m") is False
    job = repo.get(job_id)
    assert job.status == "succeeded" and job.result == {"x": 1} and job.progress == 1.0 and job.finished_at


def test_cancel_queued_and_running(repo, new_job):
    queued = new_job()
    assert repo.request_cancel(queued) == "cancelled"
    assert repo.claim(queued, "w") is False
    running = new_job()
    repo.claim(running, "w")
    assert repo.request_cancel(running) == "cancelling"
    assert repo.report_progress(running, "train", 0.5, None, None) is True  # the worker learns it
    assert repo.succeed(running, {}) is False
    assert repo.cancel(running) is True and repo.get(running).status == "cancelled"


def test_invalid_transition_is_refused(repo, new_job):
    with pytest.raises(ValueError):
        repo._cas(new_job(), "succeeded", ("queued",))


def test_reap_stale_requeues_fails_or_cancels(repo, new_job):
    later = utcnow() + timedelta(seconds=120)
    young, old, cancelling, fresh = new_job(), new_job(), new_job(), new_job()
    for job_id in (young, old, cancelling, fresh):
        repo.claim(job_id, "w")
    repo.session.execute(update(Job).where(Job.id == old).values(attempts=3))  # its last allowed run
    repo.session.commit()
    repo.request_cancel(cancelling)
    outcome = repo.reap_stale(timedelta(seconds=60), max_attempts=3, now=later)
    assert young in outcome["requeued"] and old in outcome["failed"] and cancelling in outcome["cancelled"]
    requeued = repo.get(young)
    assert requeued.status == "queued" and requeued.worker is None and requeued.dispatched_at is None
    failed = repo.get(old)
    assert failed.status == "failed" and failed.error_code == "worker_lost"
    assert repo.get(cancelling).status == "cancelled"
    assert young in {j.id for j in repo.undispatched(timedelta(seconds=5))}
    repo.heartbeat(fresh)  # a live worker: not stale now
    assert fresh not in repo.reap_stale(timedelta(seconds=60), 3)["requeued"]


def test_undispatched_skips_recent_sends(repo, new_job):
    sent, unsent = new_job(), new_job()
    repo.mark_dispatched(sent)
    ids = {j.id for j in repo.undispatched(timedelta(seconds=60))}
    assert unsent in ids and sent not in ids


def test_runner_leaves_unclaimable_and_waiting_jobs_alone(postgres_url, repo, new_job, tmp_path):
    settings = Settings(database_url=postgres_url, broker_url="redis://127.0.0.1:6379/7", artifact_root=tmp_path)
    done = new_job()
    repo.claim(done, "w")
    repo.succeed(done, {"kept": True})
    assert execute_job(done, settings, "again") == "succeeded" and repo.get(done).result == {"kept": True}

    upstream = new_job()
    waiting = new_job(depends_on=upstream)
    assert execute_job(waiting, settings, "early") == "queued"  # its dependency has not run yet
    assert repo.get(waiting).attempts == 0 and repo.get(waiting).worker is None
