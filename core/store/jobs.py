"""The job repository: every job state change goes through here, as a compare-and-set UPDATE.

States: queued → running → succeeded | failed | cancelled, running → cancelling → cancelled, and
queued → cancelled for a job cancelled before it started. A job whose worker was lost goes from
running back to queued (up to its attempt limit) or to failed. Each transition is one
``UPDATE … WHERE id = :id AND status IN (…)``; a transition that finds the job in another state
changes nothing and returns False, so two workers (or a redelivered message) cannot both win.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from layercut.store.models import FINAL_STATUSES, Job, utcnow

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "running": ("queued",),
    "cancelling": ("running",),
    "succeeded": ("running",),
    "failed": ("queued", "running", "cancelling"),
    "cancelled": ("queued", "running", "cancelling"),
    "queued": ("running", "cancelling"),  # re-queued after its worker was lost
}


class JobRepository:
    """State transitions and progress of jobs, each committed on its own."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _cas(
        self, job_id: uuid.UUID, to: str, allowed_from: Iterable[str], attempt: int | None = None, **values: Any
    ) -> bool:
        """Move the job to ``to`` if it is in one of ``allowed_from`` (and, given ``attempt``, still on that attempt)."""
        allowed = tuple(allowed_from)
        for origin in allowed:
            if origin not in TRANSITIONS[to]:
                raise ValueError(f"{origin} → {to} is not a job transition")
        conditions = [Job.id == job_id, Job.status.in_(allowed)]
        if attempt is not None:  # a worker whose job was re-queued and claimed again must not finish it
            conditions.append(Job.attempts == attempt)
        statement = (
            update(Job)
            .where(*conditions)
            .values(status=to, updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        changed = self.session.execute(statement).rowcount == 1
        self.session.commit()
        return changed

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self.session.get(Job, job_id, populate_existing=True)

    def claim(self, job_id: uuid.UUID, worker: str) -> bool:
        """queued → running for ``worker``; False if the job is not queued (finished, taken, cancelled)."""
        now = utcnow()
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
            .values(
                status="running",
                worker=worker,
                started_at=now,
                heartbeat_at=now,
                updated_at=now,
                attempts=Job.attempts + 1,
                progress=0.0,
                stage=None,
                error_code=None,
                error_message=None,
                message=None,  # why it waited (re-queued, deferred) no longer applies
            )
            .execution_options(synchronize_session=False)
        )
        changed = self.session.execute(statement).rowcount == 1
        self.session.commit()
        return changed

    def report_progress(
        self, job_id: uuid.UUID, stage: str, progress: float, eta_seconds: float | None, message: str | None
    ) -> bool:
        """Write progress (and a heartbeat); returns True when cancellation was requested."""
        now = utcnow()
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(("running", "cancelling")))
            .values(
                stage=stage,
                progress=progress,
                eta_seconds=eta_seconds,
                message=message,
                heartbeat_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        return self.cancel_requested(job_id)

    def heartbeat(self, job_id: uuid.UUID) -> None:
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(("running", "cancelling")))
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        self.session.commit()

    def cancel_requested(self, job_id: uuid.UUID) -> bool:
        return bool(self.session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one_or_none())

    def request_cancel(self, job_id: uuid.UUID) -> str | None:
        """Cancel a job: a queued one ends cancelled at once, a running one goes to cancelling.

        Returns the status after the request (a finished job keeps its status).
        """
        now = utcnow()
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.notin_(FINAL_STATUSES))
            .values(cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        if not self._cas(job_id, "cancelled", ("queued",), finished_at=now):
            self._cas(job_id, "cancelling", ("running",))
        status = self.session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
        return status

    def succeed(self, job_id: uuid.UUID, result: dict[str, Any], attempt: int | None = None) -> bool:
        return self._cas(
            job_id,
            "succeeded",
            ("running",),
            attempt,
            result=result,
            progress=1.0,
            eta_seconds=0.0,
            finished_at=utcnow(),
        )

    def fail(
        self,
        job_id: uuid.UUID,
        code: str,
        message: str,
        from_states: Iterable[str] = ("running", "cancelling"),
        attempt: int | None = None,
    ) -> bool:
        return self._cas(
            job_id, "failed", from_states, attempt, error_code=code, error_message=message, finished_at=utcnow()
        )

    def cancel(
        self, job_id: uuid.UUID, from_states: Iterable[str] = ("running", "cancelling"), attempt: int | None = None
    ) -> bool:
        return self._cas(job_id, "cancelled", from_states, attempt, finished_at=utcnow())

    def waiting_tenants(self, waiting: set[uuid.UUID], besides: str) -> set[str]:
        """The tenants other than ``besides`` with a queued job among ``waiting`` (messages waiting for a worker)."""
        if not waiting:
            return set()
        statement = select(Job.tenant).where(
            Job.id.in_(waiting), Job.tenant != besides, Job.status == "queued", Job.cancel_requested.is_(False)
        )
        return set(self.session.scalars(statement.distinct()))

    def tenant_load(self, tenants: set[str]) -> dict[str, tuple[int, datetime | None]]:
        """Per tenant: how many of its jobs run now, and when its last job started (None: never)."""
        running = func.count().filter(Job.status.in_(("running", "cancelling")))
        statement = select(Job.tenant, running, func.max(Job.started_at)).where(Job.tenant.in_(tenants))
        found = {t: (int(n), last) for t, n, last in self.session.execute(statement.group_by(Job.tenant))}
        return {t: found.get(t, (0, None)) for t in tenants}

    def defer(self, job_id: uuid.UUID, message: str) -> bool:
        """Leave a queued job queued, its message consumed: it is sent again when one of its tenant's jobs ends."""
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(deferred_at=utcnow(), message=message, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        changed = self.session.execute(statement).rowcount == 1
        self.session.commit()
        return changed

    def deferred_jobs(self, limit: int) -> list[Job]:
        """Queued jobs left waiting for their tenant's fair share, oldest first."""
        return list(
            self.session.scalars(
                select(Job)
                .where(Job.status == "queued", Job.cancel_requested.is_(False), Job.deferred_at.is_not(None))
                .order_by(Job.created_at)
                .limit(limit)
            )
        )

    def mark_dispatched(self, job_id: uuid.UUID) -> None:
        self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(dispatched_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        self.session.commit()

    def reap_stale(
        self, stale_after: timedelta, max_attempts: int, now: datetime | None = None
    ) -> dict[str, list[uuid.UUID]]:
        """Running jobs whose heartbeat stopped: re-queue them, or fail them once out of attempts."""
        now = now or utcnow()
        stale = self.session.execute(
            select(Job.id, Job.attempts, Job.status, Job.cancel_requested).where(
                Job.status.in_(("running", "cancelling")), Job.heartbeat_at < now - stale_after
            )
        ).all()
        outcome: dict[str, list[uuid.UUID]] = {"requeued": [], "failed": [], "cancelled": []}
        for job_id, attempts, status, cancel_requested in stale:
            settled = self.settle_lost(
                job_id, attempts, status, cancel_requested, max_attempts, "its worker stopped answering"
            )
            if settled is not None:
                outcome[settled].append(job_id)
        return outcome

    def settle_lost(
        self, job_id: uuid.UUID, attempt: int, status: str, cancel_requested: bool, max_attempts: int, why: str
    ) -> Literal["requeued", "failed", "cancelled"] | None:
        """A running job whose worker is gone (attempt ``attempt``): cancelled if that was asked, re-queued while it
        has attempts left, else failed ``worker_lost``. None when it moved on meanwhile (another attempt, an end)."""
        if cancel_requested:
            return "cancelled" if self.cancel(job_id, (status,), attempt=attempt) else None
        if attempt < max_attempts:
            moved = self._cas(
                job_id,
                "queued",
                (status,),
                attempt=attempt,
                worker=None,
                dispatched_at=None,
                heartbeat_at=None,
                message=f"re-queued: {why} (attempt {attempt} of {max_attempts})",
            )
            return "requeued" if moved else None
        failed = self.fail(
            job_id,
            "worker_lost",
            f"the worker running this job was lost {attempt} time(s) ({why}); giving up after {max_attempts} attempts",
            (status,),
            attempt=attempt,
        )
        return "failed" if failed else None

    def undispatched(self, older_than: timedelta, now: datetime | None = None) -> list[Job]:
        """Queued jobs never handed to the broker (their send failed, or they were re-queued)."""
        now = now or utcnow()
        return list(
            self.session.scalars(
                select(Job).where(
                    Job.status == "queued",
                    Job.cancel_requested.is_(False),
                    (Job.dispatched_at.is_(None)) | (Job.dispatched_at < now - older_than),
                )
            )
        )
