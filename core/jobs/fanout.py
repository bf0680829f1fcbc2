"""Fan-out and fan-in inside a pipeline: a running job adds the jobs that continue its work in parallel.

A sweep in the service is one ``sweep_plan`` step of the pipeline's plan. When it runs it resolves the cut points
and adds, to its own pipeline, one ``sweep_cut`` job per cut point (``depends_on`` the plan job, so they are all
sent when it succeeds and run on as many workers as there are) and one ``sweep`` job that ``waits_for`` all of
them (sent when the last one succeeds; ``layercut.jobs.pipelines``). A cut job that fails or is cancelled ends the
pipeline and cancels the others, as any step does.

The added jobs' ids are derived from the plan job's id, so a plan job that runs again after its worker died adds
nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from layercut.contracts.jobs import JobParams
from layercut.store.models import Job


def child_id(parent: uuid.UUID, name: str) -> uuid.UUID:
    """The id of the job ``parent`` adds under ``name``: the same every time the parent runs."""
    return uuid.uuid5(parent, name)


def add_fan_out(
    session: Session,
    parent: Job,
    branches: Sequence[tuple[uuid.UUID, JobParams]],
    gather: tuple[uuid.UUID, JobParams],
) -> None:
    """Add ``branches`` (each depending on ``parent``) and ``gather`` (waiting for every branch) to ``parent``'s
    pipeline, queued, and commit; rows that a previous attempt of ``parent`` already added are kept as they are."""
    if parent.pipeline_id is None:
        raise ValueError("a fan-out adds jobs to a pipeline; this job is not in one")
    wanted = [*branches, gather]
    existing = set(session.scalars(select(Job.id).where(Job.id.in_([job_id for job_id, _ in wanted]))).all())
    step = parent.step if parent.step is not None else 0
    for job_id, params in branches:
        if job_id not in existing:
            session.add(_job(job_id, parent, params, step, depends_on=parent.id))
    gather_id, gather_params = gather
    if gather_id not in existing:
        job = _job(gather_id, parent, gather_params, step, depends_on=parent.id)
        job.waits_for = [str(job_id) for job_id, _ in branches]
        session.add(job)
    session.commit()


def _job(job_id: uuid.UUID, parent: Job, params: JobParams, step: int, depends_on: uuid.UUID) -> Job:
    return Job(
        id=job_id,
        tenant=parent.tenant,
        kind=params.kind,
        status="queued",
        params=params.model_dump(mode="json"),
        pipeline_id=parent.pipeline_id,
        step=step,
        depends_on=depends_on,
        labels=parent.labels,
    )
