"""Shared fixtures. Service tests use real Postgres and Redis (started if down, never skipped)."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # the tests' MLflow client and server stay offline
# The tests never read or write the user's own data directory (~/.local/share/layercut).
os.environ["LAYERCUT_DATA_DIR"] = tempfile.mkdtemp(prefix="layercut-tests-")
# The tests' callback receivers listen on loopback, which callbacks may not reach by default (SSRF); the workers the
# tests start inherit this too. tests/api/test_api_limits.py builds its own settings without it.
os.environ.setdefault("LAYERCUT_CALLBACK_ALLOWED_HOSTS", "127.0.0.1")

from layercut.testing import services


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A migrated Postgres database for this test session (dropped afterwards)."""
    url = services.create_database()
    services.migrate(url)
    yield url
    services.drop_database(url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    services.ensure_redis()
    return services.REDIS_URL


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server, a real process on loopback, for the tests of object storage."""
    from layercut.testing.object_store import ObjectStoreServer

    server = ObjectStoreServer.start(tmp_path_factory.mktemp("s3") / "s3.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server, a real process on loopback: SQLite backend store, local artifact root (served)."""
    import sys

    from layercut.testing.servers import LoopbackServer

    home = tmp_path_factory.mktemp("mlflow")
    server = LoopbackServer.start(
        lambda port: [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination",
            str(home / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        home / "server.log",
        "the MLflow tracking server",
        health="/health",
        cwd=home,
    )
    try:
        yield server
    finally:
        server.stop()
