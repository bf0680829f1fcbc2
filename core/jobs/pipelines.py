"""Advancing a pipeline of linked jobs when one of its steps ends.

Contract (what the API creates, see ``create_pipeline_jobs``): a Pipeline row and one Job row per step,
all ``queued``, each with ``pipeline_id``, ``step`` (0, 1, …) and ``depends_on`` = the job whose output
it needs (None for the first step), and params that point at earlier steps with ``{"from_job": id}``
model references (and ``analysis_job`` for truncate, optional: the pipeline's analyze step is used).
After committing, the API dispatches only the jobs whose ``depends_on`` is None. From then on:

- a step that succeeds dispatches the queued jobs that depend on it;
- a step that fails or is cancelled cancels every still-queued step of the pipeline and ends the
  pipeline ``failed`` or ``cancelled``;
- when every step has succeeded, the pipeline ends ``succeeded``.
Pipeline.status goes queued → running (first step claimed) → succeeded | failed | cancelled.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.store.models import FINAL_STATUSES, Job, Pipeline, utcnow

log = logging.getLogger(__name__)

PIPELINE_FINAL = ("succeeded", "failed", "cancelled")


def create_pipeline_jobs(
    session: Session, tenant: str, pipeline: Pipeline, steps: list[tuple[str, dict[str, Any]]]
) -> list[Job]:
    """Add one queued Job per ``(kind, params)`` step, chained by depends_on; params may hold ``"$step:N"`` strings.

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


def mark_running(session: Session, job: Job) -> None:
    """The pipeline of a job that was just claimed is running (if it was still queued)."""
    if job.pipeline_id is None:
        return
    session.execute(
        update(Pipeline)
        .where(Pipeline.id == job.pipeline_id, Pipeline.status == "queued")
        .values(status="running", updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def ready(session: Session, job: Job) -> bool:
    """Whether a queued job may be sent: it depends on nothing, or on a job that has finished."""
    if job.depends_on is None:
        return True
    status = session.execute(select(Job.status).where(Job.id == job.depends_on)).scalar_one_or_none()
    return status is None or status in FINAL_STATUSES


def job_finished(settings: Settings, job_id: uuid.UUID) -> str | None:
    """Advance the pipeline of a finished job; returns the pipeline's status if it just ended, else None."""
    from layercut.jobs.dispatch import DispatchError, get_dispatcher

    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id, populate_existing=True)
        if job is None or job.pipeline_id is None or job.status not in FINAL_STATUSES:
            return None
        repo = JobRepository(session)
        if job.status == "succeeded":
            dependents = list(session.scalars(select(Job).where(Job.depends_on == job.id, Job.status == "queued")))
            for dependent in dependents:
                try:
                    get_dispatcher(settings).dispatch(dependent.id, dependent.kind)
                except DispatchError as exc:  # the reaper re-sends it
                    log.warning("pipeline %s: step %s not sent yet: %s", job.pipeline_id, dependent.id, exc)
            statuses = session.scalars(select(Job.status).where(Job.pipeline_id == job.pipeline_id)).all()
            if statuses and all(s == "succeeded" for s in statuses):
                return _end(session, settings, job.pipeline_id, "succeeded")
            return None
        pending = session.scalars(
            select(Job.id).where(
                Job.pipeline_id == job.pipeline_id, Job.status.notin_(FINAL_STATUSES), Job.id != job.id
            )
        ).all()
        for other in pending:
            if not repo.cancel(other, ("queued",)):
                repo.request_cancel(other)  # a step already running (not expected in a chain): ask it to stop
        return _end(session, settings, job.pipeline_id, "failed" if job.status == "failed" else "cancelled")


def _end(session: Session, settings: Settings, pipeline_id: uuid.UUID, status: str) -> str | None:
    """Set the pipeline's final status once (compare-and-set) and send its callback."""
    now = utcnow()
    changed = (
        session.execute(
            update(Pipeline)
            .where(Pipeline.id == pipeline_id, Pipeline.status.notin_(PIPELINE_FINAL))
            .values(status=status, finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
    session.commit()
    if not changed:
        return None
    from layercut.jobs import callbacks

    try:
        callbacks.pipeline_finished(settings, pipeline_id)
    except Exception:
        log.exception("sending the callback of pipeline %s failed", pipeline_id)
    return status
