"""Fixtures of the worker tests (helpers live in layercut.testing.workers)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from layercut.testing import services


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A database of the worker tests' own: a worker's reaper re-sends every queued row it finds, so rows
    left by other test packages (the API tests queue jobs that never run) must not be in it."""
    url = services.create_database()
    services.migrate(url)
    yield url
    services.drop_database(url)


@pytest.fixture(scope="session")
def worker_env(postgres_url: str, redis_url: str, tmp_path_factory) -> Callable[..., dict[str, str]]:
    """Environment for a worker (and Settings for the test process): fresh broker db, short timeouts."""

    def make(broker_db: int, artifact_root: Path, **overrides: Any) -> dict[str, str]:
        broker = f"{redis_url.rstrip('/')}/{broker_db}"
        env = {
            **os.environ,
            "LAYERCUT_DATABASE_URL": postgres_url,
            "LAYERCUT_BROKER_URL": broker,
            "LAYERCUT_ARTIFACT_ROOT": str(artifact_root),
            "LAYERCUT_HEARTBEAT_SECONDS": "1",
            "LAYERCUT_STALE_AFTER_SECONDS": "5",
            "LAYERCUT_PROGRESS_INTERVAL_SECONDS": "0.5",
            "LAYERCUT_MAX_ATTEMPTS": "3",
            "LAYERCUT_CALLBACK_ATTEMPTS": "2",
            "LAYERCUT_WORKER_METRICS_PORT": "0",
            "LAYERCUT_ALLOW_INSECURE_DEFAULTS": "1",  # the tests' callback secret is the default  # a test that reads a worker's /metrics gives it a free port
            "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
            "PYTHONUNBUFFERED": "1",
        }
        env.update({f"LAYERCUT_{k.upper()}": str(v) for k, v in overrides.items()})
        return env

    return make
