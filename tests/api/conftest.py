"""API test fixtures (see apienv.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layercut.testing.api_env import Env, make_env


@pytest.fixture
def env(postgres_url: str, tmp_path: Path) -> Env:
    e = make_env(postgres_url, tmp_path)
    yield e
    e.client.close()
