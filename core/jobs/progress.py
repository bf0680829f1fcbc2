"""Signs of life of a claimed job: a heartbeat thread for the reaper, and rate-limited progress writes that also
notice cancellation and a claim lost to another worker."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.store.models import Job

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("running", "cancelling")
"""The statuses of a job that a worker still owns."""


class LostClaim(Exception):
    """This worker no longer owns the job (the reaper re-queued it); stop without touching its row."""


T = TypeVar("T")


def through_outages(session: Session, action: Callable[[], T], seconds: float, what: str) -> T:
    """``action()``, tried again (with a fresh connection, backing off up to 2 s) while the database is unreachable,
    for at most ``seconds``; the last error is raised after that."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return action()
        except DBAPIError as exc:
            session.rollback()
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, type(exc.orig).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class Heartbeat:
    """A thread that stamps ``heartbeat_at`` every ``interval`` seconds so the reaper knows we are alive, and the
    cancel watchdog: when ``on_overdue`` is given, a job still ``cancelling`` ``grace`` seconds after this thread
    first saw it so is ended ``cancelled`` here, and ``on_overdue`` is called (a Celery pool process ends itself:
    the stage ignores its cancellation points, and nothing else would stop it)."""

    def __init__(
        self,
        database_url: str,
        job_id: uuid.UUID,
        interval: float,
        grace: float = math.inf,
        attempt: int | None = None,
        on_overdue: Callable[[], None] | None = None,
    ) -> None:
        self.database_url, self.job_id, self.interval = database_url, job_id, interval
        self.grace, self.attempt, self.on_overdue = grace, attempt, on_overdue
        self._cancelling_since: float | None = None
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
                    if self.on_overdue is not None:
                        self._watch(repo)
                except Exception as exc:  # a database blip must not kill the job; the next beat retries
                    session.rollback()
                    log.warning("heartbeat of job %s failed: %s", self.job_id, exc)

    def _watch(self, repo: JobRepository) -> None:
        """End a job that ignores its cancel for longer than the grace period."""
        status = repo.session.execute(select(Job.status).where(Job.id == self.job_id)).scalar_one_or_none()
        repo.session.commit()
        if status != "cancelling":
            self._cancelling_since = None
            return
        now = time.monotonic()
        if self._cancelling_since is None:
            self._cancelling_since = now
            return
        if now - self._cancelling_since < self.grace or self._stop.is_set():
            return
        if repo.cancel(self.job_id, ("cancelling",), attempt=self.attempt):
            log.warning(
                "job %s did not stop within %.0f s of its cancel: ended cancelled, stopping its worker process",
                self.job_id,
                self.grace,
            )
            assert self.on_overdue is not None
            self.on_overdue()


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
        try:
            if self.repo.report_progress(self.job_id, stage, round(fraction, 4), eta, message[:2000] or None):
                self._cancel = True
        except DBAPIError as exc:  # a database blip costs one progress write, never the job
            self.repo.session.rollback()
            log.warning("progress of job %s not written (%s); the next update tries again", self.job_id, exc.orig)

    def should_cancel(self) -> bool:
        """True once cancellation was requested; raises LostClaim if the job was taken from this worker."""
        now = time.monotonic()
        if not self._cancel and now - self._last_check >= self.interval:
            self._last_check = now
            try:
                row = self.repo.session.execute(
                    select(Job.status, Job.worker, Job.attempts, Job.cancel_requested).where(Job.id == self.job_id)
                ).one_or_none()
                self.repo.session.commit()
            except DBAPIError as exc:  # unknown for now: go on, and ask again at the next check
                self.repo.session.rollback()
                log.warning("cancellation of job %s not checked (%s)", self.job_id, exc.orig)
                return False
            if (
                row is None
                or row.status not in ACTIVE_STATUSES
                or row.worker != self.worker
                or row.attempts != self.attempts
            ):
                raise LostClaim(f"job {self.job_id} is no longer ours ({row.status if row else 'deleted'})")
            self._cancel = bool(row.cancel_requested)
        return self._cancel
