"""A real S3-compatible server for the tests: moto's standalone server, a separate process on loopback (never an
in-process mock), with a bucket per test module."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from layercut.testing.commands import free_port
from layercut.testing.workers import wait_for

ACCESS_KEY = "layercut-test"
SECRET_KEY = "layercut-test-secret"
REGION = "us-east-1"


@dataclass
class ObjectStoreServer:
    """``python -m moto.server`` on 127.0.0.1, logging to a file; ``stop`` ends it."""

    process: subprocess.Popen[bytes]
    endpoint: str
    log_path: Path

    @classmethod
    def start(cls, log_path: Path, timeout: float = 60) -> ObjectStoreServer:
        port = free_port()
        log = log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = cls(process, f"http://127.0.0.1:{port}", log_path)

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the S3 server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                return httpx.get(server.endpoint, timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, what="the S3 server to answer")
        return server

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def new_bucket(self) -> str:
        name = f"layercut-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, prefix: str = "artifacts") -> dict[str, str]:
        """The settings (without the LAYERCUT_ prefix) that point layercut at ``bucket``."""
        return {
            "artifact_url": f"s3://{bucket}/{prefix}",
            "s3_endpoint_url": self.endpoint,
            "s3_region": REGION,
            "s3_access_key_id": ACCESS_KEY,
            "s3_secret_access_key": SECRET_KEY,
        }

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Key → size of every object under ``prefix``."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({item["Key"]: int(item["Size"]) for item in page.get("Contents", [])})
        return found

    def read(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
