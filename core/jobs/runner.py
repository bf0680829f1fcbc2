"""Executing one job: claim it, run its stage with progress and cancellation, record what it made, settle it.

``execute_job`` is what a Celery task (``layercut.worker.tasks``) or the embedded thread
(``layercut.jobs.dispatch.InProcessDispatcher``) calls. It never leaves a job ``running``: every way out ends in
succeeded, failed (with a code) or cancelled — except when the process itself dies, which the heartbeat and the
reaper (``layercut.jobs.reaper``) take care of. The stages (and torch) load only when a stage runs
(``layercut.jobs.stage``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from layercut import telemetry
from layercut.artifacts import ArtifactStore, ArtifactStoreError, artifact_store
from layercut.contracts.errors import Cancelled, LayercutError, StorageFull, disk_full, without_root
from layercut.contracts.jobs import JobParams
from layercut.jobs import fairness, pipelines
from layercut.jobs.dispatch import Dispatcher
from layercut.jobs.lifecycle import finished
from layercut.jobs.outputs import job_result, record_outputs
from layercut.jobs.progress import Heartbeat, JobProgress, LostClaim, through_outages
from layercut.jobs.resolve import Resolver
from layercut.jobs.stage import gpu_peak_bytes, run_stage
from layercut.settings import Settings, get_settings
from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.store.models import FINAL_STATUSES, Job

log = logging.getLogger(__name__)

T = TypeVar("T")

PARAMS: TypeAdapter[JobParams] = TypeAdapter(JobParams)


def default_worker_name() -> str:
    """``host:pid`` of this process, recorded on the jobs it claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


def end_this_process() -> None:
    """Stop this process at once (a Celery pool process whose job ignores its cancel: the pool starts another)."""
    os.kill(os.getpid(), signal.SIGKILL)


def execute_job(
    job_id: uuid.UUID | str,
    settings: Settings | None = None,
    worker_name: str | None = None,
    dispatcher: Dispatcher | None = None,
    stop_process: Callable[[], None] | None = None,
) -> str:
    """Run job ``job_id`` if it can be claimed (queued → running) and return its final status.

    A job that is not queued (finished, taken by another worker, cancelled, a redelivered message) is
    left alone and its current status returned; so is one whose pipeline dependency has not finished.
    The pipeline steps a finished job unblocks are sent through ``dispatcher`` (without one, the reaper sends them).
    With ``stop_process`` (Celery pool processes pass ``end_this_process``), a job that is still running
    ``cancel_grace_seconds`` after its cancel was noticed is ended cancelled, its pipeline and callback are told, and
    ``stop_process`` is called: the cancel watchdog.
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
        if job.status == "queued" and not pipelines.ready(session, job):
            log.info("job %s waits for %s; not started", job_id, job.depends_on)
            return job.status
        if settings.tenant_fair_scheduling and job.status == "queued" and fairness.should_wait(repo, job, dispatcher):
            fairness.defer(repo, job)
            return current_status(repo, job_id)
        if not repo.claim(job_id, worker) and not take_over(repo, job_id, worker, settings, dispatcher):
            status = current_status(repo, job_id)
            log.info("job %s not claimed (status %s)", job_id, status)
            return status
        job = repo.get(job_id)
        assert job is not None  # we just claimed it
        pipelines.mark_running(session, job)
        ids = {
            "job_id": str(job.id),
            "tenant": job.tenant,
            "pipeline_id": str(job.pipeline_id) if job.pipeline_id else None,
        }
        store = artifact_store(settings)
        log_path = telemetry.job_log_path(store.root, job.tenant, job.id)
        sync_log(store, log_path, publish=False)  # an earlier attempt's lines, from wherever it ran
        with (
            store.holding(f"{job.tenant}/{job.id}", store.key(log_path)),
            telemetry.bound(**ids),
            telemetry.job_log_file(log_path, str(job.id)),
            Heartbeat(
                settings.resolved_database_url,
                job_id,
                settings.heartbeat_seconds,
                grace=settings.cancel_grace_seconds,
                attempt=job.attempts,
                on_overdue=(lambda: _overdue(settings, job_id, dispatcher, stop_process)) if stop_process else None,
            ),
        ):
            status = run_logged(session, repo, job, settings, worker)
        sync_log(store, log_path, publish=True)
        trim_cache(store, settings.artifact_cache_max_bytes)
    if status in FINAL_STATUSES:
        finished(settings, job_id, dispatcher)
    return status


def take_over(
    repo: JobRepository, job_id: uuid.UUID, worker: str, settings: Settings, dispatcher: Dispatcher | None
) -> bool:
    """A job still marked running whose process is known to be dead (Celery re-delivers the message of a pool
    process that was killed): settle it at once — re-queued and claimed by ``worker``, or failed ``worker_lost``
    once out of attempts — instead of waiting for the heartbeat timeout. True when ``worker`` now holds it."""
    job = repo.get(job_id)
    if job is None or job.status not in ("running", "cancelling") or not holder_is_gone(job.worker):
        return False
    holder = job.worker
    settled = repo.settle_lost(
        job.id, job.attempts, job.status, job.cancel_requested, settings.max_attempts, f"its process {holder} died"
    )
    log.warning("job %s: its process %s died; %s", job_id, holder, settled or "settled meanwhile")
    if settled in ("failed", "cancelled"):
        finished(settings, job_id, dispatcher)
    return settled == "requeued" and repo.claim(job_id, worker)


def holder_is_gone(holder: str | None) -> bool:
    """Whether the process recorded on a job (``[node@]host:pid``) is known to be dead: one of this machine whose
    pid is gone or a zombie. A process on another machine is never judged here: the heartbeat timeout is."""
    if not holder or ":" not in holder:
        return False
    node, _, pid_text = holder.rpartition(":")
    if node.rpartition("@")[2] != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")  # killed, not yet reaped by its parent


def trim_cache(store: ArtifactStore, max_bytes: int) -> None:
    """After a job, keep this machine's cache of the object store under its limit (a no-op on the volume)."""
    removed = store.trim(max_bytes)
    if removed:
        log.info("artifact cache trimmed by %.1f MiB to stay under %.1f MiB", removed / 2**20, max_bytes / 2**20)


def sync_log(store: ArtifactStore, log_path: Path, publish: bool) -> None:
    """With object storage, a job's log is fetched before an attempt appends to it (an earlier attempt may have run
    on another machine) and stored after it, where the API reads it. Best effort: a log that cannot be moved now
    is never a reason to fail the job."""
    if not store.remote:
        return
    try:
        if publish:
            if log_path.is_file():
                store.publish_file(log_path)
        else:
            store.newest(store.key(log_path))
    except ArtifactStoreError as exc:
        log.warning("the job's log was not %s the artifact store: %s", "stored in" if publish else "read from", exc)


def _overdue(
    settings: Settings, job_id: uuid.UUID, dispatcher: Dispatcher | None, stop_process: Callable[[], None]
) -> None:
    """The watchdog ended the job cancelled: tell its pipeline and its callback, then stop the process."""
    finished(settings, job_id, dispatcher)
    stop_process()


def run_logged(session: Session, repo: JobRepository, job: Job, settings: Settings, worker: str) -> str:
    """``run_claimed`` between a start line and an end line (status, seconds, error code), its time observed."""
    kind, started = job.kind, time.perf_counter()
    log.info(
        "job started: %s, attempt %d, on %s",
        kind,
        job.attempts,
        worker,
        extra=telemetry.log_extra(kind=kind, attempt=job.attempts, worker=worker),
    )
    status = run_claimed(session, repo, job, settings, worker)
    seconds = time.perf_counter() - started
    ended = repo.get(job.id)
    code = ended.error_code if ended is not None else None
    fields = telemetry.log_extra(kind=kind, status=status, seconds=round(seconds, 3), error_code=code)
    if status == "failed":
        log.warning(
            "job failed after %.1f s: %s: %s", seconds, code, ended.error_message if ended else "", extra=fields
        )
    else:
        log.info("job %s after %.1f s", status, seconds, extra=fields)
    if status in FINAL_STATUSES:
        telemetry.observe_job(kind, status, seconds, code, gpu_peak_bytes())
    return status


def run_claimed(session: Session, repo: JobRepository, job: Job, settings: Settings, worker: str) -> str:
    """Run a claimed job to a final status, mapping every error to failed/cancelled (never left running)."""
    store = artifact_store(settings)
    root = store.root
    out = root / job.tenant / str(job.id)
    progress = JobProgress(repo, job.id, worker, job.attempts, settings.progress_interval_seconds)
    wait = settings.database_retry_seconds

    def durably(action: Callable[[], T], what: str) -> T:
        return through_outages(session, action, wait, f"{what} of job {job.id}")

    try:
        params = parse_params(job)
        empty_folder(out)
        outcome = run_stage(params, Resolver(session, job, store), out, settings, progress)
        if progress.should_cancel():
            raise Cancelled("cancelled before the results were recorded")
        model_id = durably(lambda: record_outputs(session, job, out, root, outcome.produced), "recording the outputs")
        store.publish(out)  # before the success: a job that succeeded has its files where every machine reads them
        result = job_result(outcome.result, root)
        if model_id is not None:
            result["model_id"] = str(model_id)
        if durably(lambda: repo.succeed(job.id, result, attempt=job.attempts), "recording the success"):
            return "succeeded"
        return settle_lost_race(repo, job.id)
    except Cancelled as exc:
        session.rollback()
        log.info("job %s cancelled: %s", job.id, exc)
        durably(lambda: repo.cancel(job.id, attempt=job.attempts), "recording the cancel")
        return current_status(repo, job.id)
    except LostClaim as exc:
        session.rollback()
        log.warning("%s; stopping without changing it", exc)
        return current_status(repo, job.id)
    except LayercutError as exc:
        session.rollback()
        log.info("job %s failed: %s: %s", job.id, exc.code, exc)
        error_code, message = exc.code, without_root(str(exc), root)
        if isinstance(exc, StorageFull):
            error_code, message = classify_crash(exc)
            clear_partial_files(out)
        durably(lambda: repo.fail(job.id, error_code, message, attempt=job.attempts), "recording the failure")
        return current_status(repo, job.id)
    except BaseException as exc:
        session.rollback()
        code, message = classify_crash(exc)
        if code == "internal_error":
            log.exception("job %s crashed", job.id)
        elif code == "storage_full":
            log.error("job %s stopped: the artifact volume is full: %s", job.id, exc)
            clear_partial_files(out)
        shown = without_root(message, root)
        durably(lambda: repo.fail(job.id, code, shown, attempt=job.attempts), "recording the failure")
        if not isinstance(exc, Exception):  # KeyboardInterrupt / SystemExit: record, then let it go on
            raise
        return current_status(repo, job.id)


def parse_params(job: Job) -> JobParams:
    """The job's typed params; a LayercutError when they are invalid or of another kind than the job."""
    try:
        params = PARAMS.validate_python(job.params)
    except ValidationError as exc:
        raise LayercutError(f"the job's parameters are invalid: {exc}") from None
    if params.kind != job.kind:
        raise LayercutError(f"the job is a {job.kind} job but its parameters are for {params.kind}")
    return params


def empty_folder(out: Path) -> None:
    """Make the job's output folder, emptied of the leftovers of an attempt whose worker died."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def clear_partial_files(out: Path) -> None:
    """Empty the job's folder of what it half wrote (a disk that filled up): nothing of a failed attempt stays to
    take space or be mistaken for a result. Best effort: what cannot be removed now the reaper removes later."""
    if out.is_dir():
        for child in list(out.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


STORAGE_FULL_MESSAGE = (
    "storage_full: the artifact volume is full (no space left on device, or the disk quota is spent) while the job "
    "wrote its files; its partial files were removed. Free space (delete datasets, models or finished jobs you no "
    "longer need) or raise the quota, then run it again"
)


def classify_crash(exc: BaseException) -> tuple[str, str]:
    """The error code and message of an unexpected exception: ``time_limit`` for Celery's soft limit,
    ``storage_full`` for a write that found the disk full (ENOSPC or EDQUOT, also when a library wrapped it), else
    ``internal_error``."""
    try:  # imported here: an API process running jobs embedded never needs celery
        from celery.exceptions import SoftTimeLimitExceeded
    except ImportError:  # pragma: no cover - celery is a dependency
        SoftTimeLimitExceeded = ()  # type: ignore[assignment]
    if SoftTimeLimitExceeded and isinstance(exc, SoftTimeLimitExceeded):
        return "time_limit", "the job ran past its time limit (LAYERCUT_TASK_SOFT_TIME_LIMIT) and was stopped"
    if disk_full(exc):
        return "storage_full", STORAGE_FULL_MESSAGE
    return "internal_error", f"{type(exc).__name__}: {exc}"


def current_status(repo: JobRepository, job_id: uuid.UUID) -> str:
    """The job's status as stored now (``missing`` if its row is gone)."""
    job = repo.get(job_id)
    return job.status if job else "missing"


def settle_lost_race(repo: JobRepository, job_id: uuid.UUID) -> str:
    """succeed() found the job not running: a cancel arrived at the end (→ cancelled) or the job is no longer ours."""
    job = repo.get(job_id)
    if job is not None and job.status == "cancelling":
        repo.cancel(job_id, ("cancelling",))
    return current_status(repo, job_id)
