"""Helpers for the worker tests: settings, seed rows, a real Celery worker process, polling with deadlines."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis as redis_lib
from PIL import Image
from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from layercut.contracts.jobs import JobParams
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.models import Dataset, Job, Pipeline
from layercut.testing import SOURCE_ROOT as ROOT

PARAMS = TypeAdapter(JobParams)

TINY_TRAIN = {"epochs": 1, "batch_size": 32, "patience": None}
TINY_ANALYZE = {"probes_per_class": 1, "max_probes": 4}
TINY_COMPARE = {"latency_batches": [1], "latency_repeats": 1, "latency_warmup": 0}


ARCHIVE_SPEC = {
    "architecture": "smallcnn",
    "classes": ["blue", "red"],
    "image_size": 32,
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
}
"""A model spec that reads ``image_archive()``'s images (its classes in the order a folder lists them)."""


def image_archive(classes: tuple[str, ...] = ("red", "blue"), per_class: int = 10, size: int = 32) -> bytes:
    """A zip of small PNGs, one folder per class, each class its own colour with noise (a dataset to upload)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, name in enumerate(classes):
            for i in range(per_class):
                pixels = rng.integers(0, 60, (size, size, 3))
                pixels[..., index % 3] += 180
                png = io.BytesIO()
                Image.fromarray(pixels.astype(np.uint8)).save(png, format="PNG")
                archive.writestr(f"colours/{name}/{i}.png", png.getvalue())
    return buffer.getvalue()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def session_for(url: str):
    return get_sessionmaker(url)()


def job_row(url: str, job_id: uuid.UUID) -> Job:
    with session_for(url) as session:
        return session.get(Job, job_id, populate_existing=True)


def add_dataset(url: str, tenant: str, kind: str = "builtin", location: str = "textures") -> uuid.UUID:
    with session_for(url) as session:
        dataset = Dataset(tenant=tenant, name=location, kind=kind, location=location)
        session.add(dataset)
        session.commit()
        return dataset.id


def train_params(dataset_id: uuid.UUID, **train: Any) -> dict:
    params = {
        "kind": "train",
        "data": {"dataset_id": str(dataset_id), "image_size": 32},
        "arch": "smallcnn",
        "train": {**TINY_TRAIN, **train},
    }
    return PARAMS.validate_python(params).model_dump(mode="json")


def add_job(url: str, tenant: str, params: dict, **fields: Any) -> uuid.UUID:
    """Insert a queued job the way the API does (validated params, committed) and return its id."""
    params = PARAMS.validate_python(params).model_dump(mode="json")
    with session_for(url) as session:
        job = Job(tenant=tenant, kind=params["kind"], params=params, **fields)
        session.add(job)
        session.commit()
        return job.id


def create_pipeline_jobs(
    session: Session, tenant: str, pipeline: Pipeline, steps: list[tuple[str, dict[str, Any]]]
) -> list[Job]:
    """Add one queued Job per ``(kind, params)`` step, chained by depends_on, as the API links a pipeline's steps.

    A string ``"$step:N"`` anywhere in a step's params is replaced by the id of step N (so a step can say
    ``{"model": {"from_job": "$step:0"}}``). Flushes but does not commit; the caller commits, then dispatches
    ``jobs[0]``. Each job's ``depends_on`` is the step before it.
    """
    if pipeline.id is None:
        pipeline.id = uuid.uuid4()
    ids = [uuid.uuid4() for _ in steps]

    def substitute(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: substitute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [substitute(v) for v in value]
        if isinstance(value, str) and value.startswith("$step:"):
            return str(ids[int(value.split(":", 1)[1])])
        return value

    jobs = []
    for index, (kind, params) in enumerate(steps):
        job = Job(
            id=ids[index],
            tenant=tenant,
            kind=kind,
            status="queued",
            params=substitute(params),
            pipeline_id=pipeline.id,
            step=index,
            depends_on=ids[index - 1] if index else None,
            callback_url=None,
        )
        session.add(job)
        jobs.append(job)
    session.flush()
    return jobs


def status_of(url: str, job_id: uuid.UUID) -> str:
    return job_row(url, job_id).status


class Worker:
    """A real ``celery -A layercut.worker.app worker`` process in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str, pool: str = "prefork") -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "layercut.worker.app",
            "worker",
            "-Q",
            "gpu,cpu",
            "--pool",
            pool,
            "-c",
            "1",
            "-n",
            f"{name}@%h",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 60) -> Worker:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.tail()}")
            return b" ready." in self.log_path.read_bytes()

        wait_for(ready, timeout, what="the Celery worker to be ready")
        return self

    def tail(self, chars: int = 4000) -> str:
        return self.log_path.read_bytes()[-chars:].decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (parent and pool children), as a lost machine would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.log.close()


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings a worker started with ``env`` reads (for dispatching and reaping from the test)."""
    values = {k[len("LAYERCUT_") :].lower(): v for k, v in env.items() if k.startswith("LAYERCUT_")}
    return Settings(**values)


def flush_broker(url: str) -> None:
    redis_lib.Redis.from_url(url).flushdb()
