"""Real Postgres and Redis for the service tests: started if they are down (never skipped), one fresh
database per test session, created with Alembic so the migrations are exercised too."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import redis as redis_lib

from layercut.testing import SOURCE_ROOT as ROOT

PG_HOST = os.environ.get("LAYERCUT_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("LAYERCUT_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("LAYERCUT_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("LAYERCUT_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _admin_conninfo(dbname: str = "postgres") -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname} connect_timeout=3"


def _postgres_up() -> bool:
    try:
        with psycopg.connect(_admin_conninfo()) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def ensure_postgres(timeout: float = 60) -> None:
    """Start the local cluster if nothing answers on the port (as the machine's docs say), then wait."""
    if _postgres_up():
        return
    versions = sorted(Path(p).name for p in glob.glob("/etc/postgresql/*"))
    if versions:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _postgres_up():
            return
        time.sleep(0.5)
    raise RuntimeError(f"Postgres is not reachable on {PG_HOST}:{PG_PORT} and could not be started")


def redis_up(url: str = REDIS_URL) -> bool:
    try:
        return bool(redis_lib.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis_lib.RedisError:
        return False


def start_redis() -> None:
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
        check=False,
    )


def ensure_redis(timeout: float = 30) -> None:
    if redis_up():
        return
    start_redis()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis_up():
            return
        time.sleep(0.3)
    raise RuntimeError(f"Redis is not reachable at {REDIS_URL} and could not be started")


def create_database() -> str:
    """A new, empty Postgres database; returns its SQLAlchemy URL."""
    ensure_postgres()
    name = f"layercut_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[-1]
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str) -> None:
    """``alembic upgrade head`` against ``url``, the way a deployment does it."""
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
        check=True,
        cwd=ROOT,
        env={**os.environ, "LAYERCUT_DATABASE_URL": url},
        capture_output=True,
    )
