"""Shared fixtures. Service tests use real Postgres and Redis (started if down, never skipped)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

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
