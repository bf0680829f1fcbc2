"""Pipelines: train → analyze → truncate → retrain → compare → explain as linked jobs; only the first step is dispatched
(the job runner dispatches each next step when the one before succeeds)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from layercut.api.common import (
    IDEMPOTENCY_HEADER_DOC,
    check_idempotency_key,
    error_responses,
    field_error,
    idempotency_mismatch,
    not_found,
    page,
    paginate,
    request_hash,
)
from layercut.api.deps import SessionDep, TenantDep, dispatcher_dep
from layercut.api.routes.jobs import check_dataset, check_model_ref, dispatch
from layercut.api.schemas.common import Page
from layercut.api.schemas.pipelines import PIPELINE_EXAMPLES, PipelineCreate, PipelineOut, PipelineStep
from layercut.contracts.jobs import (
    AnalyzeParams,
    CompareParams,
    ExplainParams,
    ModelRef,
    RetrainParams,
    TrainParams,
    TruncateParams,
)
from layercut.store.jobs import JobRepository
from layercut.store.models import FINAL_STATUSES, Job, Pipeline, utcnow

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


def plan_steps(body: PipelineCreate) -> list[tuple[uuid.UUID, Any]]:
    """(job id, params) per step, linked by ``from_job`` references to the ids made here."""
    steps: list[tuple[uuid.UUID, Any]] = []
    dataset_id = body.data.dataset_id if body.data else None
    if body.model_id is None:
        train_id = uuid.uuid4()
        steps.append(
            (train_id, TrainParams(data=body.data, arch=body.arch, pretrained=body.pretrained, train=body.train))
        )
        base = ModelRef(from_job=train_id)
    else:
        base = ModelRef(model_id=body.model_id)
    analyze_id = uuid.uuid4()
    steps.append((analyze_id, AnalyzeParams(model=base, dataset_id=dataset_id, analyze=body.analyze)))
    if body.stop_after == "analyze":
        return steps
    truncate_id = uuid.uuid4()
    steps.append(
        (
            truncate_id,
            TruncateParams(
                model=base, truncate=body.truncate, analysis_job=analyze_id if body.truncate.cut == "knee" else None
            ),
        )
    )
    retrain_id = uuid.uuid4()
    steps.append(
        (
            retrain_id,
            RetrainParams(
                model=ModelRef(from_job=truncate_id),
                dataset_id=dataset_id,
                from_scratch=body.from_scratch,
                train=body.retrain or body.train,
            ),
        )
    )
    steps.append(
        (
            uuid.uuid4(),
            CompareParams(base=base, slim=ModelRef(from_job=retrain_id), dataset_id=dataset_id, compare=body.compare),
        )
    )
    if body.stop_after == "compare":
        return steps
    steps.append(
        (
            uuid.uuid4(),
            ExplainParams(
                model=base, compare_with=ModelRef(from_job=retrain_id), dataset_id=dataset_id, explain=body.explain
            ),
        )
    )
    return steps


def derived_status(steps: list[Job]) -> str:
    statuses = [s.status for s in steps]
    if not statuses:
        return "queued"
    if "failed" in statuses:
        return "failed"
    if "cancelled" in statuses:
        return "cancelled" if all(s in FINAL_STATUSES for s in statuses) else "cancelling"
    if "cancelling" in statuses:
        return "cancelling"
    if all(s == "succeeded" for s in statuses):
        return "succeeded"
    if any(s in ("running", "succeeded") for s in statuses):
        return "running"
    return "queued"


def pipeline_out(session: Session, row: Pipeline) -> PipelineOut:
    steps = list(
        session.scalars(
            select(Job)
            .where(Job.pipeline_id == row.id, Job.tenant == row.tenant)
            .order_by(Job.step)
            .execution_options(populate_existing=True)
        )
    )
    return PipelineOut(
        id=row.id,
        status=derived_status(steps),
        stored_status=row.status,
        params=row.params or {},
        callback_url=row.callback_url,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        steps=[
            PipelineStep(
                id=j.id,
                step=j.step if j.step is not None else i,
                kind=j.kind,
                status=j.status,
                stage=j.stage,
                percent=round(max(0.0, min(1.0, j.progress or 0.0)) * 100, 2),
                depends_on=j.depends_on,
                error_code=j.error_code,
                error_message=j.error_message,
            )
            for i, j in enumerate(steps)
        ],
    )


@router.post(
    "",
    response_model=PipelineOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": PipelineOut, "description": "an earlier request with this Idempotency-Key made it"},
        **error_responses(400, 401),
    },
    summary="Start a pipeline",
)
def create_pipeline(
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    body: Annotated[PipelineCreate, Body(openapi_examples=PIPELINE_EXAMPLES)],
    dispatcher: Annotated[Any, Depends(dispatcher_dep)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=IDEMPOTENCY_HEADER_DOC)] = None,
) -> PipelineOut:
    """Creates the pipeline and its steps as jobs (`pipeline_id`, `step`, `depends_on` the step before, model
    references `from_job` the step that makes the model) and dispatches the first step only. With `model_id`
    there is no train step; `stop_after: "analyze"` ends after the analysis; `truncate.cut` other than
    `"knee"` cuts where the user says instead of at the analysis's knee; `stop_after: "compare"` leaves out the
    explain step (the same test images explained by base and slim side by side)."""
    key = check_idempotency_key(idempotency_key)
    params_json = body.model_dump(mode="json")
    digest = request_hash(params_json)
    if body.model_id is None and body.data is None:
        raise field_error(
            ("body", "data"), "give data (to train a base model first) or model_id (to start from a model)", "missing"
        )
    if body.data is not None:
        check_dataset(session, tenant, body.data.dataset_id, ("body", "data", "dataset_id"))
    if body.model_id is not None:
        check_model_ref(session, tenant, ModelRef(model_id=body.model_id), ("body",))
    pipeline = Pipeline(
        id=uuid.uuid4(),
        tenant=tenant,
        status="queued",
        params=params_json,
        callback_url=str(body.callback_url) if body.callback_url else None,
        idempotency_key=key,
        request_hash=digest if key else None,
    )
    steps = plan_steps(body)
    session.add(pipeline)
    try:
        session.flush()
        previous: uuid.UUID | None = None
        for index, (job_id, params) in enumerate(steps):
            session.add(
                Job(
                    id=job_id,
                    tenant=tenant,
                    kind=params.kind,
                    status="queued",
                    params=params.model_dump(mode="json"),
                    pipeline_id=pipeline.id,
                    step=index,
                    depends_on=previous,
                )
            )
            session.flush()
            previous = job_id
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = session.scalars(
            select(Pipeline).where(Pipeline.tenant == tenant, Pipeline.idempotency_key == key)
        ).first()
        if key is None or existing is None:
            raise
        if existing.request_hash != digest:
            raise idempotency_mismatch() from None
        response.status_code = status.HTTP_200_OK
        return pipeline_out(session, existing)
    dispatch(dispatcher, steps[0][0], steps[0][1].kind)
    return pipeline_out(session, pipeline)


def get_tenant_pipeline(session: Session, tenant: str, pipeline_id: uuid.UUID) -> Pipeline:
    row = session.scalars(select(Pipeline).where(Pipeline.id == pipeline_id, Pipeline.tenant == tenant)).first()
    if row is None:
        raise not_found("pipeline", pipeline_id)
    return row


@router.get("/{pipeline_id}", response_model=PipelineOut, responses=error_responses(401, 404), summary="Get a pipeline")
def get_pipeline(pipeline_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> PipelineOut:
    return pipeline_out(session, get_tenant_pipeline(session, tenant, pipeline_id))


@router.get("", response_model=Page[PipelineOut], responses=error_responses(401), summary="List pipelines")
def list_pipelines(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[PipelineOut]:
    rows, next_cursor = page(
        list(session.scalars(paginate(select(Pipeline).where(Pipeline.tenant == tenant), Pipeline, cursor, limit))),
        limit,
    )
    return Page[PipelineOut](items=[pipeline_out(session, r) for r in rows], next_cursor=next_cursor)


@router.post(
    "/{pipeline_id}/cancel",
    response_model=PipelineOut,
    responses=error_responses(401, 404, 409),
    summary="Cancel a pipeline",
)
def cancel_pipeline(pipeline_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> PipelineOut:
    """Cancels every unfinished step (queued ones at once, a running one at its next check); 409 when every step
    already ended."""
    row = get_tenant_pipeline(session, tenant, pipeline_id)
    steps = list(
        session.scalars(select(Job).where(Job.pipeline_id == row.id, Job.tenant == tenant).order_by(Job.step.desc()))
    )
    open_steps = [j for j in steps if j.status not in FINAL_STATUSES]
    if not open_steps:
        raise HTTPException(status.HTTP_409_CONFLICT, f"pipeline {pipeline_id} already ended")
    repo = JobRepository(session)
    for job in open_steps:  # last first, so the runner never dispatches a step we are about to cancel
        repo.request_cancel(job.id)
    session.refresh(row)
    if row.status not in FINAL_STATUSES:
        row.status = (
            "cancelled"
            if all(s in FINAL_STATUSES for s in session.scalars(select(Job.status).where(Job.pipeline_id == row.id)))
            else "cancelling"
        )
        if row.status == "cancelled":
            row.finished_at = utcnow()
        session.commit()
    return pipeline_out(session, row)
