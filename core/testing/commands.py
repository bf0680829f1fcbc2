"""Helpers for the ops tests: run the real `layercut` command line in a clean environment, find a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh embedded install: no LAYERCUT_* from outside, data under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERCUT_")}
    env.update(LAYERCUT_DATA_DIR=str(tmp_path / "data"), MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def layercut(
    *args: str, env: dict[str, str], cwd: Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "layercut.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"layercut {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving_embedded(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str], Path]]:
    """`layercut serve` (embedded) on a free port in ``tmp_path`` (``env``: default a clean one with its data under
    ``tmp_path``): yields (base URL, env, folder); SIGINT after."""
    env = env if env is not None else clean_env(tmp_path)
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "layercut.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"layercut serve exited {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no /healthz within 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base, env, tmp_path
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
