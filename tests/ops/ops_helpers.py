"""Helpers for the ops tests: run the real `layercut` command line in a clean environment, find a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh embedded install: no LAYERCUT_* from outside, data under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERCUT_")}
    env.update(LAYERCUT_DATA_DIR=str(tmp_path / "data"), MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def layercut(*args: str, env: dict[str, str], cwd: Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "core.cli.main", *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"layercut {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
