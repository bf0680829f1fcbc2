"""Executing one job: claim it, run its core stage with progress and cancellation, record what it made.

``execute_job`` is what a Celery task (worker/tasks.py) or the embedded thread calls. It never leaves
a job ``running``: every way out ends in succeeded, failed (with a code) or cancelled — except when the
process itself dies, which the heartbeat and the reaper (core.jobs.reaper) take care of.
Torch and the stages are imported only inside ``execute_job``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mimetypes
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from layercut.contracts.errors import Cancelled, LayercutError, MissingResourceError
from layercut.contracts.jobs import (
    AnalyzeParams,
    CompareParams,
    ExplainParams,
    JobParams,
    ModelRef,
    RetrainParams,
    TrainParams,
    TruncateParams,
)
from layercut.settings import Settings, get_settings
from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.store.models import FINAL_STATUSES, Artifact, Dataset, Job, ModelVersion

log = logging.getLogger(__name__)

PARAMS = TypeAdapter(JobParams)
CHECKPOINT_NAME = "model.safetensors"


class DependencyFailed(LayercutError):
    """A job this one needs (the producer of its input model or analysis) did not succeed."""

    code = "dependency_failed"


class LostClaim(Exception):
    """This worker no longer owns the job (the reaper re-queued it); stop without touching its row."""


# --------------------------------------------------------------------------------------------------
# heartbeat and progress


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
                or row.status not in ("running", "cancelling")
                or row.worker != self.worker
                or row.attempts != self.attempts
            ):
                raise LostClaim(f"job {self.job_id} is no longer ours ({row.status if row else 'deleted'})")
            self._cancel = bool(row.cancel_requested)
        return self._cancel


# --------------------------------------------------------------------------------------------------
# resolving references


@dataclass
class Resolver:
    """Turns a job's ids (datasets, model refs, analysis jobs) into paths, checked against its tenant."""

    session: Session
    job: Job
    root: Path

    def dataset(self, dataset_id: uuid.UUID) -> Dataset:
        dataset = self.session.get(Dataset, dataset_id)
        if dataset is None or dataset.tenant != self.job.tenant:
            raise MissingResourceError(f"dataset {dataset_id} does not exist")
        return dataset

    def source(self, dataset: Dataset) -> str:
        """The DataConfig source of a dataset row: builtin name, absolute folder, or upload under the artifact root."""
        if dataset.kind == "builtin":
            return dataset.location
        if dataset.kind == "upload":
            return str(self.root / dataset.location)
        return str(Path(dataset.location).resolve())

    def producing_job(self, job_id: uuid.UUID, what: str) -> Job:
        producer = self.session.get(Job, job_id)
        if producer is None or producer.tenant != self.job.tenant:
            raise MissingResourceError(f"job {job_id} (the {what}) does not exist")
        if producer.status != "succeeded":
            raise DependencyFailed(
                f"job {job_id} (the {what}) ended {producer.status}"
                + (f": {producer.error_code}: {producer.error_message}" if producer.error_code else "")
            )
        return producer

    def model(self, ref: ModelRef) -> ModelVersion:
        if ref.model_id is not None:
            model = self.session.get(ModelVersion, ref.model_id)
            if model is None or model.tenant != self.job.tenant:
                raise MissingResourceError(f"model {ref.model_id} does not exist")
            return model
        producer = self.producing_job(ref.from_job, "job producing the model")
        model = self.session.scalars(
            select(ModelVersion).where(ModelVersion.job_id == producer.id).order_by(ModelVersion.created_at.desc())
        ).first()
        if model is None:
            raise DependencyFailed(f"job {producer.id} ({producer.kind}) produced no model")
        return model

    def checkpoint(self, model: ModelVersion) -> Path:
        path = self.root / model.checkpoint
        if not path.is_file():
            raise MissingResourceError(f"the checkpoint of model {model.id} is missing on the artifact volume")
        return path

    def data_config(self, dataset_id: uuid.UUID | None, model: ModelVersion):
        """The DataConfig for reading data with an existing model: its training split settings, on the given dataset."""
        from layercut.contracts.configs import DataConfig
        from layercut.stages.checkpoint import read_spec

        dataset_id = dataset_id or model.dataset_id
        if dataset_id is None:
            raise LayercutError(f"model {model.id} has no recorded dataset; give dataset_id")
        source = self.source(self.dataset(dataset_id))
        spec = read_spec(self.checkpoint(model))
        base = dict(spec.data or {})
        base.update(source=source)
        base.setdefault("image_size", spec.image_size)
        if base.get("classes") is None and dataset_id != model.dataset_id:
            base["classes"] = list(spec.classes)
        return DataConfig.model_validate({k: v for k, v in base.items() if k in DataConfig.model_fields})

    def analysis_path(self, params: TruncateParams) -> Path | None:
        """analysis.json of ``analysis_job``, or of the analyze step of this job's pipeline (for cut='knee')."""
        if params.truncate.cut != "knee":
            return None
        analysis_job = params.analysis_job
        if analysis_job is None and self.job.pipeline_id is not None:
            analysis_job = self.session.scalars(
                select(Job.id).where(Job.pipeline_id == self.job.pipeline_id, Job.kind == "analyze").order_by(Job.step)
            ).first()
        if analysis_job is None:
            raise LayercutError("truncate with cut='knee' needs analysis_job (an analyze job of this model)")
        producer = self.producing_job(analysis_job, "analysis")
        path = self.root / producer.tenant / str(producer.id) / "analysis.json"
        if not path.is_file():
            raise MissingResourceError(f"job {producer.id} has no analysis.json")
        return path


# --------------------------------------------------------------------------------------------------
# running the stages


@dataclass
class Produced:
    """A checkpoint a stage wrote, to become a ModelVersion row."""

    path: Path
    trained: bool
    dataset_id: uuid.UUID | None
    parent_id: uuid.UUID | None
    params: int
    metrics: dict[str, Any]


def _run_stage(params: Any, resolver: Resolver, out: Path, reporter) -> tuple[dict, Produced | None]:
    """Dispatch on the params' kind to the core stage; returns its summary and the model it made, if any."""
    from layercut.contracts.configs import DataConfig
    from layercut.stages import stages

    loading, working = reporter.scaled(0.0, 0.1), reporter.scaled(0.1, 1.0)
    if isinstance(params, TrainParams):
        dataset_row = resolver.dataset(params.data.dataset_id)
        data = DataConfig(source=resolver.source(dataset_row), **params.data.model_dump(exclude={"dataset_id"}))
        dataset = stages.load_data(data, loading)
        summary = stages.train_stage(
            dataset, data, params.arch, params.train, out, pretrained=params.pretrained, reporter=working
        )
        return summary, Produced(
            out / CHECKPOINT_NAME, True, dataset_row.id, None, summary["params"], _model_metrics(summary)
        )
    if isinstance(params, AnalyzeParams):
        model = resolver.model(params.model)
        dataset = stages.load_data(resolver.data_config(params.dataset_id, model), loading)
        return stages.analyze_stage(resolver.checkpoint(model), dataset, params.analyze, out, reporter=working), None
    if isinstance(params, TruncateParams):
        model = resolver.model(params.model)
        analysis = resolver.analysis_path(params)
        reporter.update("truncate", 0.0, "cutting the model")
        summary = stages.truncate_stage(resolver.checkpoint(model), params.truncate, out / CHECKPOINT_NAME, analysis)
        stages.write_json(out / "truncate.json", summary)
        reporter.update("truncate", 1.0, f"cut at {summary['cut_point']['name']}")
        metrics = {k: summary[k] for k in ("base_params", "slim_params", "params_kept")}
        return summary, Produced(
            out / CHECKPOINT_NAME, False, model.dataset_id, model.id, summary["slim_params"], metrics
        )
    if isinstance(params, RetrainParams):
        model = resolver.model(params.model)
        data = resolver.data_config(params.dataset_id, model)
        dataset = stages.load_data(data, loading)
        summary = stages.retrain_stage(
            resolver.checkpoint(model), dataset, params.train, out, from_scratch=params.from_scratch, reporter=working
        )
        dataset_id = params.dataset_id or model.dataset_id
        return summary, Produced(
            out / CHECKPOINT_NAME,
            True,
            dataset_id,
            model.parent_id or model.id,
            summary["params"],
            _model_metrics(summary),
        )
    if isinstance(params, CompareParams):
        base, slim = resolver.model(params.base), resolver.model(params.slim)
        dataset = stages.load_data(resolver.data_config(params.dataset_id, base), loading)
        return stages.compare_stage(
            resolver.checkpoint(base), resolver.checkpoint(slim), dataset, params.compare, out, reporter=working
        ), None
    if isinstance(params, ExplainParams):
        model = resolver.model(params.model)
        other = resolver.model(params.compare_with) if params.compare_with is not None else None
        dataset = stages.load_data(resolver.data_config(params.dataset_id, model), loading)
        from layercut.stages.explain import explain_stage

        return explain_stage(
            resolver.checkpoint(model),
            dataset,
            params.explain,
            out,
            reporter=working,
            compare_checkpoint=resolver.checkpoint(other) if other is not None else None,
        ), None
    raise LayercutError(f"unknown job kind {getattr(params, 'kind', None)!r}")


def _model_metrics(summary: dict) -> dict:
    keys = ("accuracy", "macro_f1", "best_epoch", "best_val_accuracy", "epochs_run", "stopped_early")
    return {k: summary[k] for k in keys if k in summary}


# --------------------------------------------------------------------------------------------------
# recording outputs

ARTIFACT_KINDS = {
    "metrics.json": "metrics",
    "analysis.json": "analysis",
    "compare.json": "report",
    "truncate.json": "report",
    "gbp_maps.npz": "maps",
}
mimetypes.add_type("application/octet-stream", ".safetensors")
mimetypes.add_type("application/octet-stream", ".npz")


def artifact_kind(path: Path) -> str:
    """checkpoint | metrics | analysis | maps | image | report | other, by file name and extension."""
    if path.name in ARTIFACT_KINDS:
        return ARTIFACT_KINDS[path.name]
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "checkpoint"
    if suffix in (".png", ".jpg", ".jpeg", ".svg"):
        return "image"
    if suffix in (".json", ".csv", ".html", ".md", ".txt"):
        return "report"
    return "other"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_outputs(session: Session, job: Job, out: Path, root: Path, produced: Produced | None) -> uuid.UUID | None:
    """Insert an Artifact row per file under ``out`` and a ModelVersion for the checkpoint made (one transaction)."""
    session.execute(delete(Artifact).where(Artifact.job_id == job.id))
    session.execute(delete(ModelVersion).where(ModelVersion.job_id == job.id))
    for path in sorted(p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        session.add(
            Artifact(
                tenant=job.tenant,
                job_id=job.id,
                path=path.relative_to(root).as_posix(),
                kind=artifact_kind(path),
                bytes=path.stat().st_size,
                sha256=file_sha256(path),
                content_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
            )
        )
    model_id = None
    if produced is not None:
        from layercut.stages.checkpoint import read_spec

        spec = read_spec(produced.path)
        model = ModelVersion(
            tenant=job.tenant,
            job_id=job.id,
            dataset_id=produced.dataset_id,
            parent_id=produced.parent_id,
            checkpoint=produced.path.relative_to(root).as_posix(),
            architecture=spec.architecture,
            classes=list(spec.classes),
            image_size=spec.image_size,
            params=int(produced.params),
            trained=produced.trained,
            metrics=_jsonable(produced.metrics, root),
            cut_point=spec.cut_point.model_dump() if spec.cut_point else None,
            source="job",
        )
        session.add(model)
        session.flush()
        model_id = model.id
    session.commit()
    return model_id


def _jsonable(value: Any, root: Path) -> Any:
    """A copy safe for a JSON column: numpy scalars unwrapped, NaN/inf → None, artifact paths made relative."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, root) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            value = value.tolist() if hasattr(value, "tolist") else str(value)
            return _jsonable(value, root)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        prefix = str(root) + os.sep
        return value[len(prefix) :] if value.startswith(prefix) else value
    if value is None or isinstance(value, (bool, int)):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------------
# the entry point


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(job_id: uuid.UUID | str, settings: Settings | None = None, worker_name: str | None = None) -> str:
    """Run job ``job_id`` if it can be claimed (queued → running) and return its final status.

    A job that is not queued (finished, taken by another worker, cancelled, a redelivered message) is
    left alone and its current status returned; so is one whose pipeline dependency has not finished.
    """
    settings = settings or get_settings()
    job_id = uuid.UUID(str(job_id))
    worker = worker_name or default_worker_name()
    with get_sessionmaker(settings.resolved_database_url)() as session:
        repo = JobRepository(session)
        job = repo.get(job_id)
        if job is None:
            log.warning("job %s does not exist; message dropped", job_id)
            return "missing"
        if job.depends_on is not None and job.status == "queued":
            dependency = session.get(Job, job.depends_on, populate_existing=True)
            if dependency is not None and dependency.status not in FINAL_STATUSES:
                log.info("job %s waits for %s (%s); not started", job_id, dependency.id, dependency.status)
                return job.status
        if not repo.claim(job_id, worker):
            current = repo.get(job_id)
            log.info("job %s not claimed (status %s)", job_id, current.status if current else None)
            return current.status if current else "missing"
        job = repo.get(job_id)
        from layercut.jobs import pipelines

        pipelines.mark_running(session, job)
        with Heartbeat(settings.resolved_database_url, job_id, settings.heartbeat_seconds):
            status = _run_claimed(session, repo, job, settings, worker)
    if status in FINAL_STATUSES:
        finished(settings, job_id)
    return status


def _run_claimed(session: Session, repo: JobRepository, job: Job, settings: Settings, worker: str) -> str:
    """Run a claimed job to a final status, mapping every error to failed/cancelled (never left running)."""
    from layercut.stages.progress import Reporter

    root = settings.resolved_artifact_root
    out = root / job.tenant / str(job.id)
    progress = JobProgress(repo, job.id, worker, job.attempts, settings.progress_interval_seconds)
    reporter = Reporter(callback=progress.write, should_cancel=progress.should_cancel)
    try:
        try:
            params = PARAMS.validate_python(job.params)
        except ValidationError as exc:
            raise LayercutError(f"the job's parameters are invalid: {exc}") from None
        if params.kind != job.kind:
            raise LayercutError(f"the job is a {job.kind} job but its parameters are for {params.kind}")
        if out.exists():  # leftovers of an attempt whose worker died
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        summary, produced = _run_stage(params, Resolver(session, job, root), out, reporter)
        if progress.should_cancel():
            raise Cancelled("cancelled before the results were recorded")
        model_id = record_outputs(session, job, out, root, produced)
        result = _jsonable(summary, root)
        if model_id is not None:
            result["model_id"] = str(model_id)
        if repo.succeed(job.id, result, attempt=job.attempts):
            return "succeeded"
        return _settle_lost_race(repo, job.id)
    except Cancelled as exc:
        session.rollback()
        log.info("job %s cancelled: %s", job.id, exc)
        repo.cancel(job.id, attempt=job.attempts)
        return _status(repo, job.id)
    except LostClaim as exc:
        session.rollback()
        log.warning("%s; stopping without changing it", exc)
        return _status(repo, job.id)
    except LayercutError as exc:
        session.rollback()
        log.info("job %s failed: %s: %s", job.id, exc.code, exc)
        repo.fail(job.id, exc.code, str(exc), attempt=job.attempts)
        return _status(repo, job.id)
    except BaseException as exc:
        session.rollback()
        code, message = _classify(exc)
        if code == "internal_error":
            log.exception("job %s crashed", job.id)
        repo.fail(job.id, code, message, attempt=job.attempts)
        if not isinstance(exc, Exception):  # KeyboardInterrupt / SystemExit: record, then let it go on
            raise
        return _status(repo, job.id)


def _classify(exc: BaseException) -> tuple[str, str]:
    try:
        from celery.exceptions import SoftTimeLimitExceeded
    except ImportError:  # pragma: no cover - celery is a dependency
        SoftTimeLimitExceeded = ()  # type: ignore[assignment]
    if SoftTimeLimitExceeded and isinstance(exc, SoftTimeLimitExceeded):
        return "time_limit", "the job ran past its time limit (LAYERCUT_TASK_SOFT_TIME_LIMIT) and was stopped"
    return "internal_error", f"{type(exc).__name__}: {exc}"


def _status(repo: JobRepository, job_id: uuid.UUID) -> str:
    job = repo.get(job_id)
    return job.status if job else "missing"


def _settle_lost_race(repo: JobRepository, job_id: uuid.UUID) -> str:
    """succeed() found the job not running: a cancel arrived at the end (→ cancelled) or the job is no longer ours."""
    job = repo.get(job_id)
    if job is not None and job.status == "cancelling":
        repo.cancel(job_id, ("cancelling",))
    return _status(repo, job_id)


def finished(settings: Settings, job_id: uuid.UUID) -> None:
    """After a job reached a final status: advance its pipeline and send its callback (errors only logged)."""
    from layercut.jobs import callbacks, pipelines

    try:
        pipelines.job_finished(settings, job_id)
    except Exception:
        log.exception("advancing the pipeline of job %s failed", job_id)
    try:
        callbacks.job_finished(settings, job_id)
    except Exception:
        log.exception("sending the callback of job %s failed", job_id)
