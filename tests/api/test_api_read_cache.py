"""The API's read cache: polls served without a database round trip while nothing changes, and never stale once
Postgres has told the process about a change (NOTIFY from migration 0002's triggers)."""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager

import psycopg
from sqlalchemy import event

from layercut.api.read_cache import ReadCache, read_cache_for
from layercut.store.db import get_engine
from layercut.store.jobs import JobRepository
from layercut.store.keys import revoke_key
from layercut.store.models import Job
from layercut.testing.api_env import FINISHED_PARAMS, FINISHED_RESULT, Env

BOUND_S = 10.0


def _cache(env: Env) -> ReadCache:
    cache = read_cache_for(env.url, True, env.settings.read_cache_entries, env.settings.read_cache_seconds)
    assert cache is not None
    deadline = time.monotonic() + BOUND_S
    while not cache.live:
        assert time.monotonic() < deadline, "the change listener did not connect"
        time.sleep(0.05)
    return cache


@contextmanager
def counted_statements(url: str):
    """Count the SQL statements the app's engine sends while the block runs."""
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _eventually(check, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _running_job(env: Env) -> uuid.UUID:
    job_id = uuid.uuid4()
    with env.session() as s:
        params = FINISHED_PARAMS.model_dump(mode="json")
        s.add(
            Job(
                id=job_id,
                tenant=env.tenant,
                kind="truncate",
                status="running",
                params=params,
                progress=0.25,
                attempts=1,
            )
        )
        s.commit()
    return job_id


def test_a_repeated_poll_touches_no_database_and_a_change_shows_once_notified(env: Env) -> None:
    _cache(env)
    job_id = _running_job(env)
    first = env.client.get(f"/v1/jobs/{job_id}", headers=env.headers)
    assert first.status_code == 200 and first.json()["percent"] == 25.0
    with counted_statements(env.url) as statements:
        again = env.client.get(f"/v1/jobs/{job_id}", headers=env.headers)
    assert again.json() == first.json()
    assert statements == [], "a cached poll (key and job) must not query the database"

    with env.session() as s:  # a worker's progress write, on its own connection
        JobRepository(s).report_progress(job_id, "train", 0.75, 3.0, "epoch 3/4")
    _eventually(
        lambda: env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).json()["percent"] == 75.0,
        "the poll still shows the old progress after the change was committed",
    )
    with env.session() as s:
        assert JobRepository(s).succeed(job_id, FINISHED_RESULT.model_dump(mode="json"), attempt=1)
    _eventually(
        lambda: env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).json()["status"] == "succeeded",
        "the poll did not see the job finish",
    )


def test_a_cached_job_is_still_a_404_for_another_tenant(env: Env) -> None:
    _cache(env)
    job_id = _running_job(env)
    assert env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).status_code == 200
    response = env.client.get(f"/v1/jobs/{job_id}", headers=env.other_headers)
    assert response.status_code == 404 and str(job_id) in response.json()["detail"]


def test_cancel_is_visible_to_the_next_poll_of_the_same_process(env: Env) -> None:
    _cache(env)
    job_id = _running_job(env)
    assert env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).json()["status"] == "running"
    assert env.client.post(f"/v1/jobs/{job_id}/cancel", headers=env.headers).json()["status"] == "cancelling"
    assert env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).json()["status"] == "cancelling"


def test_a_revoked_key_is_refused_once_notified(env: Env) -> None:
    _cache(env)
    assert env.client.get("/v1/jobs", headers=env.headers).status_code == 200  # the key is now cached
    with env.session() as s:
        assert revoke_key(s, env.key[:10])
    _eventually(
        lambda: env.client.get("/v1/jobs", headers=env.headers).status_code == 401, "a revoked key was still accepted"
    )


def test_when_the_listener_is_cut_off_reads_go_to_the_database_until_it_is_back(env: Env) -> None:
    cache = _cache(env)
    job_id = _running_job(env)
    env.client.get(f"/v1/jobs/{job_id}", headers=env.headers)
    with psycopg.connect(env.url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'layercut-read-cache'"
        ).fetchall()
        assert killed, "no listener connection found"
        _eventually(
            lambda: not cache.live or cache.get(("job", str(job_id), "http://testserver/")) is None,
            "the cache kept serving after its listener died",
        )
        admin.execute("UPDATE jobs SET progress = 0.5 WHERE id = %s", (job_id,))
    assert env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).json()["percent"] == 50.0
    _eventually(lambda: cache.live, "the listener did not reconnect")
    with counted_statements(env.url) as statements:
        env.client.get(f"/v1/jobs/{job_id}", headers=env.headers)  # the key and the job, read again
    assert len(statements) == 2
    with counted_statements(env.url) as statements:
        env.client.get(f"/v1/jobs/{job_id}", headers=env.headers)
    assert statements == [], "after reconnecting, polls are served from the cache again"


def test_a_read_that_raced_with_a_change_is_not_stored(env: Env) -> None:
    cache = _cache(env)
    generation = cache.generation()
    cache.evict("job", "some-other-job")  # any change notified while our read was in flight
    cache.put(("job", "racing", "base"), ("t", b"{}"), generation)
    assert cache.get(("job", "racing", "base")) is None
    cache.put(("job", "racing", "base"), ("t", b"{}"), cache.generation())
    assert cache.get(("job", "racing", "base")) == ("t", b"{}")


def test_sqlite_and_a_switched_off_cache_read_the_database() -> None:
    assert read_cache_for("sqlite:///x.db", True, 10, 30.0) is None
    assert read_cache_for("postgresql+psycopg://u@h/db", False, 10, 30.0) is None
