"""Jobs: submit one stage (a job of one of the stage kinds, ``layercut.contracts.kinds``), poll it, list, cancel."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response, status
from pydantic import BeforeValidator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from layercut import telemetry
from layercut.api.common import (
    IDEMPOTENCY_HEADER_DOC,
    CursorQuery,
    JobId,
    LabelQuery,
    LimitQuery,
    SortQuery,
    as_utc,
    check_idempotency_key,
    checked_callback_url,
    conflict_when_in_use,
    error_responses,
    idempotency_mismatch,
    not_found,
    page,
    paginate,
    request_hash,
    with_labels,
)
from layercut.api.crud import (
    check_capacity,
    check_job_memory,
    check_references,
    dispatch,
    get_tenant_job,
    job_out,
    job_summary,
)
from layercut.api.deps import DispatcherDep, ReadCacheDep, SessionDep, SettingsDep, StoreDep, TenantDep
from layercut.api.schemas.common import Page
from layercut.api.schemas.jobs import (
    JOB_CREATE_EXAMPLES,
    JobCreate,
    JobLogLine,
    JobLogs,
    JobOut,
    JobSummary,
)
from layercut.contracts.kinds import STAGE_KINDS
from layercut.jobs.lifecycle import finished
from layercut.jobs.retention import delete_jobs
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.store.models import FINAL_STATUSES, JOB_STATUSES, Job

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _iso_only(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", value):
        raise ValueError("give an ISO 8601 date-time such as 2025-01-31T12:00:00Z, not a number")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]


# --- routes ----------------------------------------------------------------------------------------


@router.post(
    "",
    response_model=JobOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": JobOut, "description": "an earlier request with this Idempotency-Key made it"},
        **error_responses(400, 401),
    },
    summary="Submit a job",
)
def create_job(
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    body: Annotated[JobCreate, Body(openapi_examples=JOB_CREATE_EXAMPLES)],
    dispatcher: DispatcherDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=IDEMPOTENCY_HEADER_DOC)] = None,
) -> JobOut:
    """Validate the typed parameters and every reference (datasets, models, jobs of the caller's tenant), insert
    the job as `queued`, commit, then send it to its queue. The body is `{"params": {"kind": …, …}, "callback_url": …}`.
    """
    key = check_idempotency_key(idempotency_key)
    callback_url = checked_callback_url(settings, body.callback_url)
    params_json = body.params.model_dump(mode="json")
    digest = request_hash(
        {
            "params": params_json,
            "callback_url": callback_url,
            **({"labels": body.labels} if body.labels else {}),
        }
    )
    check_references(session, tenant, body.params)
    check_job_memory(session, settings, tenant, body.params)
    check_capacity(session, settings, tenant, 1, key, Job)
    job = Job(
        id=uuid.uuid4(),
        tenant=tenant,
        kind=body.params.kind,
        status="queued",
        params=params_json,
        labels=body.labels or None,
        callback_url=callback_url,
        idempotency_key=key,
        request_hash=digest if key else None,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = session.scalars(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)).first()
        if key is None or existing is None:
            raise
        if existing.request_hash != digest:
            raise idempotency_mismatch() from None
        response.status_code = status.HTTP_200_OK
        return job_out(request, session, existing)
    dispatch(dispatcher, job.id, job.kind)
    return job_out(request, session, job)


def _job_json(settings: Settings, request: Request, job_id: uuid.UUID) -> tuple[str, bytes] | None:
    """(owning tenant, the JobOut JSON) read from the database, or None when there is no such job."""
    with get_sessionmaker(settings.resolved_database_url)() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        return job.tenant, job_out(request, session, job).model_dump_json().encode()


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(401, 404), summary="Get a job")
async def get_job(
    request: Request, job_id: JobId, settings: SettingsDep, cache: ReadCacheDep, tenant: TenantDep
) -> Response:
    """Status, stage, percent, ETA, message, result and metrics, error, artifacts with download URLs.

    Built for polling: the answer is served from the API process's read cache until the job row or its
    artifacts change (Postgres NOTIFY), so polls cost no database round trip while nothing moves."""
    key = ("job", str(job_id), str(request.base_url))
    found = cache.get(key) if cache is not None else None
    if found is None:
        generation = cache.generation() if cache is not None else None
        found = await run_in_threadpool(_job_json, settings, request, job_id)
        if found is not None and cache is not None:
            cache.put(key, found, generation)
    if found is None or found[0] != tenant:
        raise not_found("job", job_id)
    return Response(found[1], media_type="application/json")


LOG_PAGE_MAX = 1000


@router.get(
    "/{job_id}/logs", response_model=JobLogs, responses=error_responses(401, 404), summary="Read a job's log lines"
)
def get_job_logs(
    job_id: JobId,
    session: SessionDep,
    store: StoreDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0, description="the first line to return (0: the oldest)")] = 0,
    limit: Annotated[int, Query(ge=1, le=LOG_PAGE_MAX, description="most lines returned")] = 200,
) -> JobLogs:
    """The lines the job's runs logged (start, progress of note, end, errors with their codes), oldest first,
    every attempt in turn; empty while the job has not started. With object storage, an attempt's lines are
    stored when it ends: until then they are on the worker that runs it."""
    job = get_tenant_job(session, tenant, job_id)
    path: Path | None = telemetry.job_log_path(store.root, job.tenant, job.id)
    if store.remote and path is not None:
        path = store.newest(store.key(path))
    items: list[JobLogLine] = []
    more = False
    if path is not None and path.is_file():
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines):
                if number < offset:
                    continue
                if len(items) == limit:
                    more = True
                    break
                items.append(log_line(line))
    return JobLogs(items=items, next_offset=offset + len(items) if more else None)


def log_line(text: str) -> JobLogLine:
    """A stored JSON log line as the API shows it (a line that is not JSON becomes its message)."""
    try:
        record = json.loads(text)
    except ValueError:
        return JobLogLine(message=text.rstrip("\n"))
    if not isinstance(record, dict):
        return JobLogLine(message=text.rstrip("\n"))
    known = {name: record.pop(name, None) for name in ("time", "level", "logger", "message")}
    return JobLogLine(
        time=known["time"],
        level=known["level"],
        logger=known["logger"],
        message=str(known["message"] or ""),
        fields={key: value for key, value in record.items() if value is not None},
    )


@router.get("", response_model=Page[JobSummary], responses=error_responses(401), summary="List jobs")
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status_: Annotated[
        Literal[JOB_STATUSES] | None,  # type: ignore[valid-type]
        Query(alias="status", description="only jobs in this status"),
    ] = None,
    kind: Annotated[Literal[STAGE_KINDS] | None, Query(description="only jobs of this kind")] = None,  # type: ignore[valid-type]
    pipeline_id: Annotated[uuid.UUID | None, Query(description="only the steps of this pipeline")] = None,
    created_after: Annotated[IsoDateTime | None, Query(description="inclusive; ISO 8601, naive times are UTC")] = None,
    created_before: Annotated[IsoDateTime | None, Query(description="exclusive; ISO 8601, naive times are UTC")] = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: SortQuery = "-created_at",
    label: LabelQuery = None,
) -> Page[JobSummary]:
    """Newest first (``sort=created_at`` for oldest first), cursor-paginated (keyset on creation time and id,
    stable under inserts); ``label=key=value`` (repeatable) keeps the jobs that carry every label given."""
    statement = with_labels(select(Job).where(Job.tenant == tenant), Job, label)
    if status_:
        statement = statement.where(Job.status == status_)
    if kind:
        statement = statement.where(Job.kind == kind)
    if pipeline_id:
        statement = statement.where(Job.pipeline_id == pipeline_id)
    if created_after is not None:
        statement = statement.where(Job.created_at >= as_utc(created_after, "created_after"))
    if created_before is not None:
        statement = statement.where(Job.created_at < as_utc(created_before, "created_before"))
    rows, next_cursor = page(list(session.scalars(paginate(statement, Job, cursor, limit, sort))), limit, sort)
    return Page[JobSummary](items=[job_summary(j) for j in rows], next_cursor=next_cursor)


@router.post(
    "/{job_id}/cancel", response_model=JobOut, responses=error_responses(401, 404, 409), summary="Cancel a job"
)
def cancel_job(
    request: Request,
    job_id: JobId,
    session: SessionDep,
    tenant: TenantDep,
    cache: ReadCacheDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
) -> JobOut:
    """A queued job ends `cancelled` at once; a running one goes to `cancelling` and stops at its next check.
    A finished job is a 409."""
    job = get_tenant_job(session, tenant, job_id)
    if job.status in FINAL_STATUSES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already ended ({job.status})")
    ended = JobRepository(session).request_cancel(job.id) == "cancelled"
    if cache is not None:  # read-your-writes in this process without waiting for the notification
        cache.evict("job", str(job.id))
    session.refresh(job)
    if ended:  # cancelled while queued: no worker will end it, so its pipeline and callback are told here
        finished(settings, job.id, dispatcher)
    return job_out(request, session, job)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 409),
    summary="Delete a finished job",
)
def delete_job(job_id: JobId, session: SessionDep, store: StoreDep, tenant: TenantDep, cache: ReadCacheDep) -> Response:
    """Delete an ended job with its artifacts, the model versions it made and its log. 409 while it runs, when an
    unfinished job reads what it made, or when it is a step of a pipeline (delete the pipeline)."""
    job = get_tenant_job(session, tenant, job_id)
    if job.pipeline_id is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {job_id} is a step of pipeline {job.pipeline_id}: delete the pipeline"
        )
    with conflict_when_in_use(session):
        delete_jobs(session, [job], store)
    if cache is not None:
        cache.evict("job", str(job_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
