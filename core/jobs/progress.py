"""Signs of life of a claimed job: a heartbeat thread for the reaper, and rate-limited progress writes that also
notice cancellation and a claim lost to another worker."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select

from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.store.models import Job

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("running", "cancelling")
"""The statuses of a job that a worker still owns."""


class LostClaim(Exception):
    """This worker no longer owns the job (the reaper re-queued it); stop without touching its row."""


class Heartbeat:
    """A thread that stamps ``heartbeat_at`` every ``interval`` seconds so the reaper knows we are alive."""

    def __init__(self, database_url: str, job_id: uuid.UUID, interval: float) -> None:
        self.database_url, self.job_id, self.interval = database_url, job_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        with get_sessionmaker(self.database_url)() as session:
            repo = JobRepository(session)
            while not self._stop.wait(self.interval):
                try:
                    repo.heartbeat(self.job_id)
                except Exception as exc:  # a database blip must not kill the job; the next beat retries
                    session.rollback()
                    log.warning("heartbeat of job %s failed: %s", self.job_id, exc)


@dataclass
class JobProgress:
    """Rate-limited progress writes and cancellation checks of one claimed job (callbacks for a ``Reporter``)."""

    repo: JobRepository
    job_id: uuid.UUID
    worker: str
    attempts: int
    interval: float
    started: float = field(default_factory=time.monotonic)
    _last_write: float = -math.inf
    _last_check: float = -math.inf
    _cancel: bool = False

    def write(self, stage: str, fraction: float, message: str) -> None:
        """Store stage, fraction, ETA (elapsed / fraction) and message, at most once per interval (always at 1.0)."""
        now = time.monotonic()
        if now - self._last_write < self.interval and fraction < 1.0:
            return
        self._last_write = now
        elapsed = now - self.started
        eta = elapsed * (1.0 - fraction) / fraction if fraction > 1e-3 else None
        if self.repo.report_progress(self.job_id, stage, round(fraction, 4), eta, message[:2000] or None):
            self._cancel = True

    def should_cancel(self) -> bool:
        """True once cancellation was requested; raises LostClaim if the job was taken from this worker."""
        now = time.monotonic()
        if not self._cancel and now - self._last_check >= self.interval:
            self._last_check = now
            row = self.repo.session.execute(
                select(Job.status, Job.worker, Job.attempts, Job.cancel_requested).where(Job.id == self.job_id)
            ).one_or_none()
            self.repo.session.commit()
            if (
                row is None
                or row.status not in ACTIVE_STATUSES
                or row.worker != self.worker
                or row.attempts != self.attempts
            ):
                raise LostClaim(f"job {self.job_id} is no longer ours ({row.status if row else 'deleted'})")
            self._cancel = bool(row.cancel_requested)
        return self._cancel
