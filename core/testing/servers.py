"""Servers the tests start as real processes on loopback (an S3 server, an MLflow tracking server), never mocks:
started on a free port, waited for until their health URL answers, stopped with the test session."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from layercut.testing.commands import free_port
from layercut.testing.workers import wait_for


@dataclass
class LoopbackServer:
    """One server process on 127.0.0.1, logging to a file."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def start(
        cls,
        command: Callable[[int], list[str]],
        log_path: Path,
        what: str,
        health: str = "/",
        timeout: float = 90,
        cwd: Path | None = None,
    ) -> LoopbackServer:
        """Run ``command(port)`` and wait until ``health`` answers below 500."""
        port = free_port()
        log = log_path.open("ab")
        process = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        server = cls(process, f"http://127.0.0.1:{port}", log_path)

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{what} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                return httpx.get(server.url + health, timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, what=f"{what} to answer")
        return server

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
