"""A real S3-compatible server for the tests: moto's standalone server, a separate process on loopback (never an
in-process mock), with a bucket per test module."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layercut.testing.servers import LoopbackServer

ACCESS_KEY = "layercut-test"
SECRET_KEY = "layercut-test-secret"
REGION = "us-east-1"


@dataclass
class ObjectStoreServer:
    """``python -m moto.server`` on 127.0.0.1; ``stop`` ends it."""

    server: LoopbackServer

    @classmethod
    def start(cls, log_path: Path, timeout: float = 60) -> ObjectStoreServer:
        return cls(
            LoopbackServer.start(
                lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                log_path,
                "the S3 server",
                timeout=timeout,
            )
        )

    @property
    def endpoint(self) -> str:
        return self.server.url

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
        self.server.stop()
