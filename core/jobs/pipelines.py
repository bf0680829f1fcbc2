"""Advancing a pipeline of linked jobs when one of its steps ends.

Contract (what the API makes of the pipeline's plan, ``layercut.contracts.plan``): a Pipeline row and one Job
row per step of the plan, all ``queued``, each with ``pipeline_id``, ``step`` (0, 1, …) and ``depends_on`` = the
job of the step before it (None for the first step), and params whose model references point at the jobs of the
earlier steps that feed them (``{"from_job": id}``, and ``analysis_job`` for a cut at the knee). After committing,
the API dispatches only the first step. From then on, following ``depends_on``:

- a step that succeeds dispatches the queued jobs that depend on it;
- a fan-out step (``sweep_plan``) adds jobs to its pipeline while it runs (``layercut.jobs.fanout``): jobs that
  depend on it, sent when it succeeds, and one that ``waits_for`` all of them, sent when the last one succeeds;
- a step that fails or is cancelled cancels every still-queued step of the pipeline and ends the
  pipeline ``failed`` or ``cancelled``;
- when every step has succeeded, the pipeline ends ``succeeded``.
Pipeline.status goes queued → running (first step claimed) → succeeded | failed | cancelled.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from layercut.jobs import callbacks
from layercut.jobs.dispatch import Dispatcher, DispatchError
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.store.models import FINAL_STATUSES, Job, Pipeline, utcnow

log = logging.getLogger(__name__)


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
    """Whether a queued job may run: what it depends on has finished (or it depends on nothing), and every job it
    waits for (a fan-in) has succeeded."""
    if job.depends_on is not None:
        status = session.execute(select(Job.status).where(Job.id == job.depends_on)).scalar_one_or_none()
        if status is not None and status not in FINAL_STATUSES:
            return False
    waited = waits_for(job)
    if waited:
        statuses = session.scalars(select(Job.status).where(Job.id.in_(waited))).all()
        return len(statuses) == len(waited) and all(status == "succeeded" for status in statuses)
    return True


def waits_for(job: Job) -> list[uuid.UUID]:
    """The jobs a fan-in job gathers (none for a plain step)."""
    return [uuid.UUID(str(job_id)) for job_id in job.waits_for or []]


def job_finished(settings: Settings, job_id: uuid.UUID, dispatcher: Dispatcher | None) -> str | None:
    """Advance the pipeline of a finished job; returns the pipeline's status if it just ended, else None.

    The steps it unblocks are sent through ``dispatcher``; without one they wait for the reaper to send them.
    """
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id, populate_existing=True)
        if job is None or job.pipeline_id is None or job.status not in FINAL_STATUSES:
            return None
        if job.status != "succeeded":
            cancel_open_steps(session, job)
            return end_pipeline(session, settings, job.pipeline_id, "failed" if job.status == "failed" else "cancelled")
        send_dependents(session, job, dispatcher)
        statuses = session.scalars(select(Job.status).where(Job.pipeline_id == job.pipeline_id)).all()
        if statuses and all(s == "succeeded" for s in statuses):
            return end_pipeline(session, settings, job.pipeline_id, "succeeded")
        return None


def send_dependents(session: Session, job: Job, dispatcher: Dispatcher | None) -> None:
    """Dispatch the queued jobs whose ``depends_on`` is ``job``, and the fan-in jobs of its pipeline that wait for it
    and are now ready (a failed send is left to the reaper; a fan-in sent twice by two finishing jobs runs once)."""
    dependents = [
        other
        for other in session.scalars(select(Job).where(Job.depends_on == job.id, Job.status == "queued"))
        if ready(session, other)  # a fan-in that still waits for other jobs is sent by the last of them
    ]
    fan_ins = session.scalars(
        select(Job).where(Job.pipeline_id == job.pipeline_id, Job.status == "queued", Job.waits_for.is_not(None))
    )
    dependents += [
        other for other in fan_ins if job.id in waits_for(other) and other not in dependents and ready(session, other)
    ]
    if dispatcher is None:
        if dependents:
            log.info("pipeline %s: no dispatcher here; the reaper sends the next step", job.pipeline_id)
        return
    for dependent in dependents:
        try:
            dispatcher.dispatch(dependent.id, dependent.kind)
        except DispatchError as exc:  # the reaper re-sends it
            log.warning("pipeline %s: step %s not sent yet: %s", job.pipeline_id, dependent.id, exc)


def cancel_open_steps(session: Session, job: Job) -> None:
    """Cancel the other unfinished steps of a pipeline whose step ``job`` failed or was cancelled."""
    repo = JobRepository(session)
    pending = session.scalars(
        select(Job.id).where(Job.pipeline_id == job.pipeline_id, Job.status.notin_(FINAL_STATUSES), Job.id != job.id)
    ).all()
    for other in pending:
        if not repo.cancel(other, ("queued",)):
            repo.request_cancel(other)  # a step already running (not expected in a chain): ask it to stop


def end_pipeline(session: Session, settings: Settings, pipeline_id: uuid.UUID, status: str) -> str | None:
    """Set the pipeline's final status once (compare-and-set) and send its callback; None if it had ended."""
    now = utcnow()
    changed = (
        session.execute(
            update(Pipeline)
            .where(Pipeline.id == pipeline_id, Pipeline.status.notin_(FINAL_STATUSES))
            .values(status=status, finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
    session.commit()
    if not changed:
        return None
    try:
        callbacks.pipeline_finished(settings, pipeline_id)
    except Exception:
        log.exception("sending the callback of pipeline %s failed", pipeline_id)
    return status
