"""What the routes share: tenant-scoped lookups (404 for another tenant's object), the reference checks of job
params (422 naming the field), reading a job's artifacts and a pipeline's steps, a job as the API shows it, and
handing a job to its dispatcher. Route modules import this, never one another."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import HTTPException, Request, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from layercut.api.common import field_error, link_for, not_found
from layercut.api.schemas.artifacts import ArtifactOut
from layercut.api.schemas.jobs import JobError, JobMetrics, JobOut, JobSummary
from layercut.contracts.configs import AnalyzeConfig, ExplainConfig, TrainConfig
from layercut.contracts.jobs import (
    FAN_OUT_KINDS,
    AnalyzeParams,
    CompareParams,
    ExplainParams,
    ExportParams,
    JobParams,
    ModelRef,
    RetrainParams,
    SelectParams,
    SweepPlanParams,
    TrainParams,
    TruncateParams,
)
from layercut.contracts.kinds import MODEL_MAKING_KINDS
from layercut.contracts.memory import (
    MIB,
    MemoryEstimate,
    analysis_memory,
    batch_that_fits,
    explanation_memory,
    training_memory,
)
from layercut.jobs.dispatch import Dispatcher
from layercut.settings import Settings
from layercut.store.models import FINAL_STATUSES, Artifact, Dataset, Job, ModelVersion, Pipeline

log = logging.getLogger("layercut.api")

Loc = tuple[str | int, ...]
"""Where a field is in the request, as FastAPI's 422s name it: ("body", "params", "model")."""

PARAMS_LOC: Loc = ("body", "params")


# --- tenant-scoped lookups -------------------------------------------------------------------------


def get_tenant_job(session: Session, tenant: str, job_id: uuid.UUID) -> Job:
    """The tenant's job, or a 404 (also for another tenant's job)."""
    job = session.scalars(select(Job).where(Job.id == job_id, Job.tenant == tenant)).first()
    if job is None:
        raise not_found("job", job_id)
    return job


def get_tenant_pipeline(session: Session, tenant: str, pipeline_id: uuid.UUID) -> Pipeline:
    """The tenant's pipeline, or a 404."""
    row = session.scalars(select(Pipeline).where(Pipeline.id == pipeline_id, Pipeline.tenant == tenant)).first()
    if row is None:
        raise not_found("pipeline", pipeline_id)
    return row


def get_tenant_model(session: Session, tenant: str, model_id: uuid.UUID) -> ModelVersion:
    """The tenant's model version, or a 404."""
    row = session.scalars(
        select(ModelVersion).where(ModelVersion.id == model_id, ModelVersion.tenant == tenant)
    ).first()
    if row is None:
        raise not_found("model", model_id)
    return row


def find_tenant_dataset(session: Session, tenant: str, dataset_id: uuid.UUID) -> Dataset | None:
    """The tenant's dataset, or None."""
    return session.scalars(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant == tenant)).first()


def get_tenant_dataset(session: Session, tenant: str, dataset_id: uuid.UUID) -> Dataset:
    """The tenant's dataset, or a 404."""
    row = find_tenant_dataset(session, tenant, dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    return row


def job_artifacts(session: Session, job: Job) -> Sequence[Artifact]:
    """The files a job recorded, oldest first (then by path)."""
    return session.scalars(
        select(Artifact)
        .where(Artifact.job_id == job.id, Artifact.tenant == job.tenant)
        .order_by(Artifact.created_at, Artifact.path)
    ).all()


def pipeline_jobs(session: Session, pipeline: Pipeline) -> list[Job]:
    """The jobs of a pipeline's steps in step order, read fresh from the database."""
    return list(
        session.scalars(
            select(Job)
            .where(Job.pipeline_id == pipeline.id, Job.tenant == pipeline.tenant)
            .order_by(Job.step)
            .execution_options(populate_existing=True)
        )
    )


# --- presentation shared by several routes ---------------------------------------------------------


# --- jobs as the API shows them -------------------------------------------------------------------


def _summary_fields(job: Job) -> dict[str, Any]:
    error = JobError(code=job.error_code, message=job.error_message) if (job.error_code or job.error_message) else None
    return dict(
        id=job.id,
        kind=job.kind,
        status=job.status,
        stage=job.stage,
        percent=round(max(0.0, min(1.0, job.progress or 0.0)) * 100, 2),
        eta_seconds=job.eta_seconds,
        message=job.message,
        error=error,
        attempts=job.attempts,
        pipeline_id=job.pipeline_id,
        step=job.step,
        depends_on=job.depends_on,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
        labels=job.labels or {},
    )


def job_summary(job: Job) -> JobSummary:
    return JobSummary(**_summary_fields(job))


def _candidate_at(result: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The candidate of a select or sweep result at the cut point ``result[key]`` names (none when it is null)."""
    index = (result.get(key) or {}).get("index")
    return [c for c in result.get("candidates") or [] if (c.get("cut_point") or {}).get("index") == index][:1]


HEADLINE_SOURCES: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
    "train": lambda result: [result],
    "retrain": lambda result: [result],
    "truncate": lambda result: [{**result, "params": result.get("slim_params")}],
    "import": lambda result: [result],
    "select": lambda result: [*_candidate_at(result, "cut_point"), result],
    "sweep_cut": lambda result: [result.get("candidate") or {}],
    "sweep": lambda result: _candidate_at(result, "smallest_within_budget"),
    "compare": lambda result: [result.get("slim") or {}],
}
"""Where each kind's result keeps the numbers of the model it made or measured (the first source holding a key
wins); kinds not listed (analyze, explain, export, sweep_plan) have no headline numbers."""


def headline_metrics(kind: str, result: dict[str, Any] | None) -> JobMetrics | None:
    """A result's headline numbers, the same keys for every kind (``JobMetrics``)."""
    if not result or kind not in HEADLINE_SOURCES:
        return None
    found: dict[str, Any] = {}
    for source in HEADLINE_SOURCES[kind](result):
        for key in JobMetrics.model_fields:
            value = source.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.setdefault(key, value)
    return JobMetrics(**found) if found else None


def job_out(request: Request, session: Session, job: Job) -> JobOut:
    # Artifacts are recorded as a job finishes, so an unfinished job (what polls mostly see) has none.
    artifacts = job_artifacts(session, job) if job.status in FINAL_STATUSES else []
    result = job.result if isinstance(job.result, dict) else None
    return JobOut(
        **_summary_fields(job),
        params=job.params,
        callback_url=job.callback_url,
        result=result,
        metrics=headline_metrics(job.kind, result),
        artifacts=[artifact_out(request, a) for a in artifacts],
    )


def artifact_out(request: Request, row: Artifact) -> ArtifactOut:
    """An artifact as the API shows it, with the URL to download it."""
    return ArtifactOut(
        id=row.id,
        job_id=row.job_id,
        name=row.path.rsplit("/", 1)[-1],
        kind=row.kind,
        bytes=row.bytes,
        sha256=row.sha256,
        content_type=row.content_type,
        created_at=row.created_at,
        download_url=link_for(request, "download_artifact", artifact_id=str(row.id)),
    )


def derived_status(steps: list[Job]) -> str:
    """A pipeline's status from its steps': failed if one failed, cancelled once one was cancelled and all ended
    (cancelling before), succeeded when all did, running while one runs or some succeeded, else queued."""
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


# --- reference checks ------------------------------------------------------------------------------


def check_dataset(session: Session, tenant: str, dataset_id: uuid.UUID | None, loc: Loc) -> None:
    """A named dataset must be the tenant's (422 at ``loc``); None names none."""
    if dataset_id is not None and find_tenant_dataset(session, tenant, dataset_id) is None:
        raise field_error(loc, f"dataset {dataset_id} not found", "not_found")


def tenant_job_kind(session: Session, tenant: str, job_id: uuid.UUID) -> str | None:
    """The kind of the tenant's job ``job_id``; None if the tenant has no such job."""
    return session.scalars(select(Job.kind).where(Job.id == job_id, Job.tenant == tenant)).first()


def check_model_ref(session: Session, tenant: str, ref: ModelRef, loc: Loc) -> None:
    """A model reference must name the tenant's model version, or a job of the tenant that makes a model."""
    if ref.model_id is not None:
        found = session.scalars(
            select(ModelVersion.id).where(ModelVersion.id == ref.model_id, ModelVersion.tenant == tenant)
        ).first()
        if found is None:
            raise field_error((*loc, "model_id"), f"model {ref.model_id} not found", "not_found")
        return
    assert ref.from_job is not None  # ModelRef holds exactly one of the two
    kind = tenant_job_kind(session, tenant, ref.from_job)
    if kind is None:
        raise field_error((*loc, "from_job"), f"job {ref.from_job} not found", "not_found")
    if kind not in MODEL_MAKING_KINDS:
        raise field_error(
            (*loc, "from_job"),
            f"job {ref.from_job} is a {kind} job, which makes no model (use a {', '.join(MODEL_MAKING_KINDS)} job)",
        )


def check_analysis_job(session: Session, tenant: str, params: TruncateParams | SelectParams | SweepPlanParams) -> None:
    """An ``analysis_job`` must be an analyze job of the tenant; a cut at the knee and a select job need one."""
    loc = (*PARAMS_LOC, "analysis_job")
    if params.analysis_job is None:
        if isinstance(params, TruncateParams) and params.truncate.cut == "knee":
            raise field_error(
                loc,
                "cut='knee' needs analysis_job: the analyze job whose knee to "
                "cut at (or give a cut point index or name in truncate.cut)",
            )
        return
    kind = tenant_job_kind(session, tenant, params.analysis_job)
    if kind is None:
        raise field_error(loc, f"job {params.analysis_job} not found", "not_found")
    if kind != "analyze":
        raise field_error(loc, f"job {params.analysis_job} is a {kind} job, not an analyze job")


def check_references(session: Session, tenant: str, params: JobParams) -> None:
    """Every dataset, model and job a job's params name must exist and belong to ``tenant`` (422 naming the field);
    a sweep runs only inside a pipeline, which its fan-out adds jobs to."""
    base = PARAMS_LOC
    if params.kind == "import":
        raise field_error(
            (*base, "kind"),
            "an import job comes with its weights file: POST /v1/models/import (multipart: weights, spec)",
        )
    if params.kind in (*FAN_OUT_KINDS, "sweep_plan"):
        raise field_error(
            (*base, "kind"),
            f"a {params.kind} job is part of a sweep, which fans out inside a pipeline: POST /v1/pipelines with "
            '"sweep": {"cuts": …} (and "model_id" to sweep an existing model)',
        )
    if params.kind == "mlflow":
        raise field_error(
            (*base, "kind"),
            'an mlflow job logs a whole pipeline: POST /v1/pipelines with "mlflow": {"experiment": …}',
        )
    if isinstance(params, TrainParams):
        check_dataset(session, tenant, params.data.dataset_id, (*base, "data", "dataset_id"))
    elif isinstance(params, (AnalyzeParams, RetrainParams)):
        check_model_ref(session, tenant, params.model, (*base, "model"))
        check_dataset(session, tenant, params.dataset_id, (*base, "dataset_id"))
    elif isinstance(params, TruncateParams):
        check_model_ref(session, tenant, params.model, (*base, "model"))
        check_analysis_job(session, tenant, params)
    elif isinstance(params, (SelectParams, SweepPlanParams)):
        check_model_ref(session, tenant, params.model, (*base, "model"))
        check_dataset(session, tenant, params.dataset_id, (*base, "dataset_id"))
        check_analysis_job(session, tenant, params)
    elif isinstance(params, ExplainParams):
        check_model_ref(session, tenant, params.model, (*base, "model"))
        if params.compare_with is not None:
            check_model_ref(session, tenant, params.compare_with, (*base, "compare_with"))
        check_dataset(session, tenant, params.dataset_id, (*base, "dataset_id"))
    elif isinstance(params, ExportParams):
        check_model_ref(session, tenant, params.model, (*base, "model"))
        check_dataset(session, tenant, params.dataset_id, (*base, "dataset_id"))
    elif isinstance(params, CompareParams):
        check_model_ref(session, tenant, params.base, (*base, "base"))
        check_model_ref(session, tenant, params.slim, (*base, "slim"))
        check_dataset(session, tenant, params.dataset_id, (*base, "dataset_id"))


# --- memory ----------------------------------------------------------------------------------------


def check_batches_fit(
    settings: Settings, doing: str, batch_size: int, estimate_of: Callable[[int], MemoryEstimate | None], loc: Loc
) -> None:
    """Refuse (422 at ``loc``, the batch size) work whose batches are estimated not to fit a worker, saying which
    batch size fits; ``estimate_of(n)`` estimates batches of n images (None: cannot be estimated)."""
    limit = settings.worker_memory_mb * MIB
    estimate = estimate_of(batch_size)
    if limit <= 0 or estimate is None or estimate.total <= limit:
        return
    fits = batch_that_fits(estimate_of(1), limit)
    advice = (
        f"a batch_size of {fits} or less fits"
        if fits
        else "not even one image fits: use a smaller image_size or a smaller architecture"
    )
    raise field_error(
        loc,
        f"{doing} in batches of {batch_size} needs {estimate.explain()}; a worker has {settings.worker_memory_mb} "
        f"MiB (LAYERCUT_WORKER_MEMORY_MB): {advice}",
        "too_large",
    )


def check_training_memory(settings: Settings, arch: str, image_size: int, train: TrainConfig, loc: Loc) -> None:
    """Training ``arch`` at ``image_size`` px must fit a worker."""
    check_batches_fit(
        settings,
        f"training {arch} at {image_size} px",
        train.batch_size,
        lambda n: training_memory(arch, image_size, n, train.optimizer),
        loc,
    )


def check_analysis_memory(settings: Settings, arch: str, image_size: int, analyze: AnalyzeConfig, loc: Loc) -> None:
    """Refuse (422 at ``loc``) an analysis whose one probe image is estimated not to fit its memory budget (the
    worker lowers the batch to fit, but cannot go below one image)."""
    budget = min(settings.analyze_memory_budget_mb, analyze.memory_budget_mb or settings.analyze_memory_budget_mb)
    estimate = analysis_memory(arch, image_size)
    if estimate is None or estimate.total <= budget * MIB:
        return
    raise field_error(
        loc,
        f"analyzing {arch} at {image_size} px needs at least {estimate.explain()}; the analysis may use "
        f"{budget} MiB (analyze.memory_budget_mb, at most LAYERCUT_ANALYZE_MEMORY_BUDGET_MB): use a smaller "
        "image_size or a larger budget",
        "too_large",
    )


def check_explanation_memory(settings: Settings, arch: str, image_size: int, explain: ExplainConfig, loc: Loc) -> None:
    """Explaining ``arch`` at ``image_size`` px (a backward per batch for the gradient methods) must fit a worker."""
    check_batches_fit(
        settings,
        f"explaining {arch} at {image_size} px",
        explain.batch_size,
        lambda n: explanation_memory(arch, image_size, n),
        loc,
    )


def uncut_model(session: Session, tenant: str, ref: ModelRef) -> ModelVersion | None:
    """The tenant's model a reference names by id, if it is a whole (uncut) model: what the estimates know."""
    if ref.model_id is None:
        return None
    model = session.get(ModelVersion, ref.model_id)
    return model if model is not None and model.tenant == tenant and model.cut_point is None else None


def check_job_memory(session: Session, settings: Settings, tenant: str, params: JobParams) -> None:
    """The memory checks a single job's params allow before it runs: training from a known architecture, and an
    analysis or explanation of one of the tenant's uncut models."""
    if isinstance(params, TrainParams):
        loc = (*PARAMS_LOC, "train", "batch_size")
        check_training_memory(settings, params.arch, params.data.image_size, params.train, loc)
    elif isinstance(params, AnalyzeParams) and (model := uncut_model(session, tenant, params.model)) is not None:
        loc = (*PARAMS_LOC, "analyze", "memory_budget_mb")
        check_analysis_memory(settings, model.architecture, model.image_size, params.analyze, loc)
    elif isinstance(params, ExplainParams) and (model := uncut_model(session, tenant, params.model)) is not None:
        loc = (*PARAMS_LOC, "explain", "batch_size")
        check_explanation_memory(settings, model.architecture, model.image_size, params.explain, loc)


# --- admission -------------------------------------------------------------------------------------

RETRY_AFTER_SECONDS = 30
"""What a 429 for a full tenant tells the client to wait before trying again."""


def check_capacity(session: Session, settings: Settings, tenant: str, adding: int, key: str | None, table: Any) -> None:
    """429 with Retry-After when ``adding`` more unfinished jobs would take ``tenant`` past its limit
    (``LAYERCUT_TENANT_MAX_ACTIVE_JOBS``), so that one tenant cannot fill the queues; a repeated request (the same
    Idempotency-Key, which returns what it made) is never refused."""
    limit = settings.tenant_max_active_jobs
    if limit <= 0:
        return
    if (
        key is not None
        and session.scalars(select(table.id).where(table.tenant == tenant, table.idempotency_key == key)).first()
    ):
        return
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.tenant == tenant, Job.status.notin_(FINAL_STATUSES))
    )
    if int(active or 0) + adding > limit:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"your tenant has {active} unfinished jobs and this request adds {adding}; at most {limit} may be queued "
            "or running at once (the server's LAYERCUT_TENANT_MAX_ACTIVE_JOBS). Wait for some to finish, or cancel "
            "some, then submit again",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


# --- writing jobs ----------------------------------------------------------------------------------


def add_pipeline_jobs(
    session: Session, tenant: str, pipeline: Pipeline, steps: Sequence[tuple[uuid.UUID, JobParams]]
) -> None:
    """Add one queued job per ``(job id, params)`` step of ``pipeline``, in order, each depending on the step
    before it (flushed one by one, so each ``depends_on`` names a row that exists; the caller commits)."""
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
                labels=pipeline.labels,
            )
        )
        session.flush()
        previous = job_id


def dispatch(dispatcher: Dispatcher, job_id: uuid.UUID, kind: str) -> None:
    """Hand a committed job to its dispatcher; a failed send leaves it queued for the reaper to re-send."""
    try:
        dispatcher.dispatch(job_id, kind)
    except Exception as exc:  # DispatchError, or anything else: the row is committed and will be re-sent
        log.warning("dispatch of job %s failed (%s); it stays queued for the re-dispatcher", job_id, exc)
