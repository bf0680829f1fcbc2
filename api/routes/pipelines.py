"""Pipelines: the steps of the pipeline's plan (``layercut.contracts.plan``: train → analyze → truncate → retrain →
compare → explain) as linked jobs; only the first step is dispatched (the job engine dispatches each next step when
the one before succeeds)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Body, Header, HTTPException, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from layercut.api.common import (
    IDEMPOTENCY_HEADER_DOC,
    CursorQuery,
    LabelQuery,
    LimitQuery,
    PipelineId,
    SortQuery,
    check_idempotency_key,
    checked_callback_url,
    conflict_when_in_use,
    error_responses,
    field_error,
    idempotency_mismatch,
    page,
    paginate,
    request_hash,
    with_labels,
)
from layercut.api.crud import (
    add_pipeline_jobs,
    check_analysis_memory,
    check_capacity,
    check_dataset,
    check_explanation_memory,
    check_model_ref,
    check_training_memory,
    derived_status,
    dispatch,
    get_tenant_pipeline,
    pipeline_jobs,
)
from layercut.api.deps import DispatcherDep, ReadCacheDep, SessionDep, SettingsDep, StoreDep, TenantDep
from layercut.api.schemas.common import Page
from layercut.api.schemas.pipelines import PIPELINE_EXAMPLES, PipelineCreate, PipelineOut, PipelineStep
from layercut.contracts.jobs import (
    AnalyzeParams,
    CompareParams,
    ExplainParams,
    ExportParams,
    JobParams,
    MlflowParams,
    ModelRef,
    RetrainParams,
    SelectParams,
    SweepPlanParams,
    TrainParams,
    TruncateParams,
)
from layercut.contracts.kinds import StageKind
from layercut.contracts.plan import GIVEN, InputRole, PlanStep, cut_rule, pipeline_plan
from layercut.jobs import callbacks, retention
from layercut.settings import Settings
from layercut.store.jobs import JobRepository
from layercut.store.models import FINAL_STATUSES, Job, ModelVersion, Pipeline, utcnow

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


@dataclass(frozen=True)
class PlannedPipeline:
    """A pipeline request, and the ids of the jobs its plan's steps will be."""

    body: PipelineCreate
    ids: dict[str, uuid.UUID]

    @property
    def dataset_id(self) -> uuid.UUID | None:
        """The dataset every step reads (None: each model's own)."""
        return self.body.data.dataset_id if self.body.data else None

    def model(self, step: PlanStep, role: InputRole) -> ModelRef:
        """The model that feeds ``role`` of ``step``: the one the pipeline was given, or an earlier step's."""
        source = step.source(role)
        if source is None:
            raise ValueError(f"the pipeline's plan gives its {step.kind} step no {role} input")
        if source == GIVEN:
            return ModelRef(model_id=self.body.model_id)
        return ModelRef(from_job=self.ids[source])

    def job(self, step: PlanStep, role: InputRole) -> uuid.UUID | None:
        """The job of the earlier step that feeds ``role`` of ``step``; None when the plan gives it no such input."""
        source = step.source(role)
        return self.ids[source] if source is not None else None


def train_params(planned: PlannedPipeline, step: PlanStep) -> TrainParams:
    """Train the base model on the request's data."""
    body = planned.body
    assert body.data is not None  # checked by the route: a pipeline without data starts from a model (no train)
    return TrainParams(data=body.data, arch=body.arch, pretrained=body.pretrained, train=body.train)


def analyze_params(planned: PlannedPipeline, step: PlanStep) -> AnalyzeParams:
    """Analyze the base model (trained here, or given)."""
    return AnalyzeParams(
        model=planned.model(step, "model"), dataset_id=planned.dataset_id, analyze=planned.body.analyze
    )


def truncate_params(planned: PlannedPipeline, step: PlanStep) -> TruncateParams:
    """Cut the base model, at the analysis's knee when the plan feeds it one."""
    return TruncateParams(
        model=planned.model(step, "model"), truncate=planned.body.truncate, analysis_job=planned.job(step, "analysis")
    )


def retrain_params(planned: PlannedPipeline, step: PlanStep) -> RetrainParams:
    """Retrain the slim model (with the train settings unless the request gives its own)."""
    body = planned.body
    return RetrainParams(
        model=planned.model(step, "model"),
        dataset_id=planned.dataset_id,
        from_scratch=body.from_scratch,
        train=body.retrain or body.train,
    )


def select_params(planned: PlannedPipeline, step: PlanStep) -> SelectParams:
    """The auto cut of the base model, from its analysis, each candidate retrained as the slim model would be."""
    body = planned.body
    analysis_job = planned.job(step, "analysis")
    assert analysis_job is not None  # the plan feeds select the analysis
    return SelectParams(
        model=planned.model(step, "model"),
        analysis_job=analysis_job,
        dataset_id=planned.dataset_id,
        select=body.select,
        dropout=body.truncate.dropout,
        from_scratch=body.from_scratch,
        train=body.retrain or body.train,
    )


def sweep_plan_params(planned: PlannedPipeline, step: PlanStep) -> SweepPlanParams:
    """A sweep of the base model (fanned out to one job per cut point when it runs), marked with its analysis's knee
    and probes."""
    body = planned.body
    assert body.sweep is not None  # the plan has a sweep step only when the request asks for one
    return SweepPlanParams(
        model=planned.model(step, "model"),
        analysis_job=planned.job(step, "analysis"),
        dataset_id=planned.dataset_id,
        sweep=body.sweep,
        from_scratch=body.from_scratch,
        train=body.retrain or body.train,
    )


def compare_params(planned: PlannedPipeline, step: PlanStep) -> CompareParams:
    """Compare the base model with the retrained slim one."""
    return CompareParams(
        base=planned.model(step, "base"),
        slim=planned.model(step, "slim"),
        dataset_id=planned.dataset_id,
        compare=planned.body.compare,
    )


def explain_params(planned: PlannedPipeline, step: PlanStep) -> ExplainParams:
    """Explain the base model with the retrained slim one beside it."""
    return ExplainParams(
        model=planned.model(step, "model"),
        compare_with=planned.model(step, "compare_with"),
        dataset_id=planned.dataset_id,
        explain=planned.body.explain,
    )


def export_params(planned: PlannedPipeline, step: PlanStep) -> ExportParams:
    """Export the slim model as a deployable file, checked on the pipeline's test images."""
    assert planned.body.export is not None  # the plan has an export step only when the request asks for one
    return ExportParams(model=planned.model(step, "model"), dataset_id=planned.dataset_id, export=planned.body.export)


def mlflow_params(planned: PlannedPipeline, step: PlanStep) -> MlflowParams:
    """Log the run every earlier step makes to the service's MLflow server."""
    assert planned.body.mlflow is not None  # the plan has an mlflow step only when the request asks for one
    steps = {kind: job_id for kind, job_id in planned.ids.items() if kind != step.kind}
    return MlflowParams(
        base=planned.model(step, "base"),
        dataset_id=planned.dataset_id,
        steps=steps,
        mlflow=planned.body.mlflow,
        select=planned.body.select,
    )


STEP_PARAMS: dict[StageKind, Callable[[PlannedPipeline, PlanStep], JobParams]] = {
    "train": train_params,
    "analyze": analyze_params,
    "truncate": truncate_params,
    "retrain": retrain_params,
    "select": select_params,
    "sweep_plan": sweep_plan_params,
    "compare": compare_params,
    "explain": explain_params,
    "export": export_params,
    "mlflow": mlflow_params,
}
"""The params of each kind of step, from the request and the earlier steps that feed it."""


def plan_steps(body: PipelineCreate) -> list[tuple[uuid.UUID, JobParams]]:
    """(job id, params) per step of the pipeline's plan, in its order, linked by ``from_job`` references (and
    ``analysis_job``) to the ids of the earlier steps' jobs made here."""
    plan = pipeline_plan(
        train=body.model_id is None,
        stop_after=body.stop_after,
        cut=cut_rule(body.truncate.cut),
        sweep=body.sweep is not None,
        export=body.export is not None,
        mlflow=body.mlflow is not None,
    )
    planned = PlannedPipeline(body, {step.kind: uuid.uuid4() for step in plan.steps})
    return [(planned.ids[step.kind], STEP_PARAMS[step.kind](planned, step)) for step in plan.steps]


def pipeline_out(session: Session, row: Pipeline) -> PipelineOut:
    """A pipeline as the API shows it: its derived status and its steps' progress."""
    steps = pipeline_jobs(session, row)
    return PipelineOut(
        id=row.id,
        status=derived_status(steps),
        stored_status=row.status,
        params=row.params,
        labels=row.labels or {},
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
                waits_for=[uuid.UUID(str(job_id)) for job_id in j.waits_for or []],
                error_code=j.error_code,
                error_message=j.error_message,
            )
            for i, j in enumerate(steps)
        ],
    )


def check_mlflow(settings: Settings, body: PipelineCreate) -> None:
    """A pipeline that asks to be logged to MLflow must be a whole run, on a service that has a tracking server."""
    if body.mlflow is None:
        return
    if settings.mlflow_tracking_uri is None:
        raise field_error(
            ("body", "mlflow"),
            "this service logs to no MLflow tracking server (its operator sets LAYERCUT_MLFLOW_TRACKING_URI); leave "
            "out mlflow",
            "not_configured",
        )
    if body.stop_after != "explain":
        raise field_error(
            ("body", "mlflow"), 'logging to MLflow needs the whole run: stop_after "explain" (the default)'
        )


def check_pipeline_memory(session: Session, settings: Settings, tenant: str, body: PipelineCreate) -> None:
    """A pipeline's training (base and slim: the slim is smaller, so the base's estimate bounds it) and its analysis
    must be estimated to fit a worker before its first step is queued."""
    if body.model_id is None and body.data is not None:
        arch, size = body.arch, body.data.image_size
        check_training_memory(settings, arch, size, body.train, ("body", "train", "batch_size"))
        if body.retrain is not None:
            check_training_memory(settings, arch, size, body.retrain, ("body", "retrain", "batch_size"))
    elif body.model_id is not None:
        model = session.get(ModelVersion, body.model_id)
        if model is None or model.tenant != tenant or model.cut_point is not None:
            return
        arch, size = model.architecture, model.image_size
    else:
        return
    check_analysis_memory(settings, arch, size, body.analyze, ("body", "analyze", "memory_budget_mb"))
    check_explanation_memory(settings, arch, size, body.explain, ("body", "explain", "batch_size"))


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
    settings: SettingsDep,
    body: Annotated[PipelineCreate, Body(openapi_examples=PIPELINE_EXAMPLES)],
    dispatcher: DispatcherDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=IDEMPOTENCY_HEADER_DOC)] = None,
) -> PipelineOut:
    """Creates the pipeline and its steps as jobs (`pipeline_id`, `step`, `depends_on` the step before, model
    references `from_job` the step that makes the model) and dispatches the first step only. With `model_id`
    there is no train step; `stop_after: "analyze"` ends after the analysis. `truncate.cut` is `"auto"` by
    default: one `select` step retrains candidate slim models until the smallest within the accuracy budget
    (`select.max_drop` points of validation accuracy, or `select.min_accuracy`) is certain, and its result says
    whether the budget was kept; `"knee"` cuts at the analysis's knee and a cut point index or name cuts there
    (truncate, then retrain), with no budget checked. `sweep` adds a step that retrains a slim model at each chosen
    cut point; `stop_after: "compare"` leaves out the explain step (the same test images explained by base and
    slim side by side)."""
    key = check_idempotency_key(idempotency_key)
    callback_url = checked_callback_url(settings, body.callback_url)
    params_json = body.model_dump(mode="json")
    digest = request_hash(params_json)
    if body.model_id is None and body.data is None:
        raise field_error(
            ("body", "data"), "give data (to train a base model first) or model_id (to start from a model)", "missing"
        )
    check_mlflow(settings, body)
    if body.data is not None:
        check_dataset(session, tenant, body.data.dataset_id, ("body", "data", "dataset_id"))
    if body.model_id is not None:
        check_model_ref(session, tenant, ModelRef(model_id=body.model_id), ("body",))
    check_pipeline_memory(session, settings, tenant, body)
    pipeline = Pipeline(
        id=uuid.uuid4(),
        tenant=tenant,
        status="queued",
        params=params_json,
        labels=body.labels or None,
        callback_url=callback_url,
        idempotency_key=key,
        request_hash=digest if key else None,
    )
    steps = plan_steps(body)
    check_capacity(session, settings, tenant, len(steps), key, Pipeline)
    session.add(pipeline)
    try:
        session.flush()
        add_pipeline_jobs(session, tenant, pipeline, steps)
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


@router.get("/{pipeline_id}", response_model=PipelineOut, responses=error_responses(401, 404), summary="Get a pipeline")
def get_pipeline(pipeline_id: PipelineId, session: SessionDep, tenant: TenantDep) -> PipelineOut:
    """The pipeline's status (derived from its steps) and every step with its status, stage and percent."""
    return pipeline_out(session, get_tenant_pipeline(session, tenant, pipeline_id))


@router.get("", response_model=Page[PipelineOut], responses=error_responses(401), summary="List pipelines")
def list_pipelines(
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: SortQuery = "-created_at",
    label: LabelQuery = None,
) -> Page[PipelineOut]:
    """Newest first (``sort=created_at`` for oldest first), cursor-paginated; ``label=key=value`` (repeatable)
    keeps the pipelines that carry every label given."""
    statement = with_labels(select(Pipeline).where(Pipeline.tenant == tenant), Pipeline, label)
    rows, next_cursor = page(list(session.scalars(paginate(statement, Pipeline, cursor, limit, sort))), limit, sort)
    return Page[PipelineOut](items=[pipeline_out(session, r) for r in rows], next_cursor=next_cursor)


@router.post(
    "/{pipeline_id}/cancel",
    response_model=PipelineOut,
    responses=error_responses(401, 404, 409),
    summary="Cancel a pipeline",
)
def cancel_pipeline(
    pipeline_id: PipelineId, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> PipelineOut:
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
        if row.status == "cancelled":  # it ended here, with no worker to tell anyone: its callbacks go now
            for job in open_steps:
                callbacks.job_finished(settings, job.id)
            callbacks.pipeline_finished(settings, row.id)
    return pipeline_out(session, row)


@router.delete(
    "/{pipeline_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 409),
    summary="Delete a finished pipeline",
)
def delete_pipeline(
    pipeline_id: PipelineId, session: SessionDep, store: StoreDep, tenant: TenantDep, cache: ReadCacheDep
) -> Response:
    """Delete a pipeline whose every step has ended, with its jobs, their artifacts, models and logs. 409 while a
    step runs or is queued (cancel the pipeline first), or when an unfinished job reads what it made."""
    row = get_tenant_pipeline(session, tenant, pipeline_id)
    steps = [job.id for job in pipeline_jobs(session, row)]
    with conflict_when_in_use(session):
        retention.delete_pipeline(session, row, store)
    if cache is not None:
        for job_id in steps:
            cache.evict("job", str(job_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
