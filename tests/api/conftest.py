"""API test fixtures (see apienv.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apienv import Env, make_env  # noqa: E402


@pytest.fixture
def env(postgres_url: str, tmp_path: Path) -> Env:
    e = make_env(postgres_url, tmp_path)
    yield e
    e.client.close()
