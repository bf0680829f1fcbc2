"""Forgetting finished work: delete jobs, pipelines and imported models with their files, on request (the API's
DELETE routes) or when they are older than the retention setting (``LAYERCUT_RETENTION_DAYS``, run by the reaper).

Only finished work is deleted, and nothing an unfinished job still reads: a job whose models or outputs a queued
or running job names, a model such a job uses. The rows go first (one transaction), then the files, so a crash in
between leaves files without rows (harmless, never served) rather than rows without files.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from layercut import telemetry
from layercut.artifacts import ArtifactStore, ArtifactStoreError, artifact_store
from layercut.contracts.files import IMPORTS_FOLDER
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.models import FINAL_STATUSES, Artifact, Dataset, Job, ModelVersion, Pipeline

log = logging.getLogger(__name__)

EXPIRE_BATCH = 100
"""Most jobs or pipelines one retention pass deletes (the next pass goes on)."""


class InUse(Exception):
    """What was asked to be deleted is not finished, or an unfinished job still reads it; the message says which."""


def _mentions(params: object, ids: set[str]) -> bool:
    """Whether a job's params name any of ``ids`` (a model id, a job whose output it reads)."""
    text = json.dumps(params, default=str)
    return any(ident in text for ident in ids)


def _unfinished_readers(session: Session, tenant: str, ids: set[str], exclude: set[uuid.UUID]) -> list[uuid.UUID]:
    active = session.scalars(select(Job).where(Job.tenant == tenant, Job.status.notin_(FINAL_STATUSES))).all()
    return [job.id for job in active if job.id not in exclude and _mentions(job.params or {}, ids)]


def check_deletable(session: Session, jobs: list[Job]) -> None:
    """Raise ``InUse`` unless every job has ended and no other unfinished job reads what they made."""
    running = [job for job in jobs if job.status not in FINAL_STATUSES]
    if running:
        raise InUse(
            f"job {running[0].id} has not ended ({running[0].status}); cancel it or wait for it to end, then delete"
        )
    if not jobs:
        return
    ids = {str(job.id) for job in jobs}
    models = session.scalars(select(ModelVersion.id).where(ModelVersion.job_id.in_([job.id for job in jobs]))).all()
    ids |= {str(model) for model in models}
    readers = _unfinished_readers(session, jobs[0].tenant, ids, {job.id for job in jobs})
    if readers:
        raise InUse(
            f"unfinished job(s) {', '.join(map(str, readers[:5]))} read what this made; cancel them or wait, "
            "then delete"
        )


def _delete_job_rows(session: Session, jobs: list[Job]) -> list[tuple[str, uuid.UUID]]:
    """Delete the rows of ``jobs``, their artifacts and the model versions they made (not committed); returns the
    (tenant, job id) whose files go once the rows are gone."""
    ids = [job.id for job in jobs]
    folders = [(job.tenant, job.id) for job in jobs]
    if not ids:
        return folders
    session.execute(update(Job).where(Job.depends_on.in_(ids)).values(depends_on=None))
    made = session.scalars(select(ModelVersion.id).where(ModelVersion.job_id.in_(ids))).all()
    if made:
        session.execute(update(ModelVersion).where(ModelVersion.parent_id.in_(made)).values(parent_id=None))
        session.execute(delete(ModelVersion).where(ModelVersion.id.in_(made)))
    session.execute(delete(Artifact).where(Artifact.job_id.in_(ids)))
    session.execute(delete(Job).where(Job.id.in_(ids)))
    return folders


def _delete_job_files(folders: list[tuple[str, uuid.UUID]], store: ArtifactStore) -> None:
    for tenant, job_id in folders:
        with _logged_store_error(f"the files of job {job_id}"):
            store.delete_tree(f"{tenant}/{job_id}")
            store.delete_tree(f"{tenant}/{IMPORTS_FOLDER}/{job_id}")
            store.delete_file(store.key(telemetry.job_log_path(store.root, tenant, job_id)))


@contextmanager
def _logged_store_error(what: str) -> Iterator[None]:
    """Files whose rows are gone and that the store would not delete now: logged, never served, and not a reason
    to fail the deletion the rows already made."""
    try:
        yield
    except ArtifactStoreError as exc:
        log.warning("%s were not all removed from the artifact store: %s", what, exc)


def delete_jobs(session: Session, jobs: list[Job], store: ArtifactStore) -> int:
    """Delete ``jobs`` (checked with ``check_deletable`` first), their artifacts, the model versions they made
    and their files, in one transaction. Returns how many jobs were deleted."""
    check_deletable(session, jobs)
    folders = _delete_job_rows(session, jobs)
    session.commit()
    _delete_job_files(folders, store)
    return len(folders)


def delete_pipeline(session: Session, pipeline: Pipeline, store: ArtifactStore) -> int:
    """Delete a pipeline whose every step has ended, with its jobs and their files, in one transaction; returns
    the jobs deleted."""
    jobs = list(session.scalars(select(Job).where(Job.pipeline_id == pipeline.id)))
    check_deletable(session, jobs)
    folders = _delete_job_rows(session, jobs)
    session.execute(delete(Pipeline).where(Pipeline.id == pipeline.id))
    session.commit()
    _delete_job_files(folders, store)
    return len(folders)


def delete_model(session: Session, model: ModelVersion, store: ArtifactStore) -> None:
    """Delete an imported model and its files (with the import job that made it); a model another job made goes
    with that job (``InUse`` says which)."""
    maker = session.get(Job, model.job_id) if model.job_id is not None else None
    if maker is not None and maker.kind == "import":
        delete_jobs(session, [maker], store)
        return
    if model.job_id is not None:
        raise InUse(f"model {model.id} is an output of job {model.job_id}: delete that job (or its pipeline)")
    readers = _unfinished_readers(session, model.tenant, {str(model.id)}, set())
    if readers:
        raise InUse(f"unfinished job(s) {', '.join(map(str, readers[:5]))} use model {model.id}; cancel or wait")
    checkpoint = model.checkpoint
    session.execute(update(ModelVersion).where(ModelVersion.parent_id == model.id).values(parent_id=None))
    session.delete(model)
    session.commit()
    folder, _, _ = checkpoint.rpartition("/")
    with _logged_store_error(f"the files of model {model.id}"):
        if folder.rpartition("/")[2] == str(model.id):
            store.delete_tree(folder)
        else:
            store.delete_file(checkpoint)


def expire(settings: Settings, now: datetime | None = None) -> dict[str, int]:
    """One retention pass: delete finished jobs (outside pipelines) and finished pipelines that ended more than
    ``retention_days`` ago, at most ``EXPIRE_BATCH`` of each; what is still read by unfinished work is kept."""
    if settings.retention_days <= 0:
        return {"jobs": 0, "pipelines": 0}
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=settings.retention_days)
    store = artifact_store(settings)
    deleted = {"jobs": 0, "pipelines": 0}
    with get_sessionmaker(settings.resolved_database_url)() as session:
        old_jobs = session.scalars(
            select(Job)
            .where(
                Job.pipeline_id.is_(None),
                Job.kind != "import",  # an imported model stays until it is deleted
                Job.status.in_(FINAL_STATUSES),
                Job.finished_at < cutoff,
            )
            .limit(EXPIRE_BATCH)
        ).all()
        for job in old_jobs:
            try:
                deleted["jobs"] += delete_jobs(session, [job], store)
            except InUse as exc:
                session.rollback()
                log.info("retention keeps job %s: %s", job.id, exc)
        old_pipelines = session.scalars(
            select(Pipeline).where(Pipeline.finished_at.is_not(None), Pipeline.finished_at < cutoff).limit(EXPIRE_BATCH)
        ).all()
        for pipeline in old_pipelines:
            try:
                delete_pipeline(session, pipeline, store)
                deleted["pipelines"] += 1
            except InUse as exc:
                session.rollback()
                log.info("retention keeps pipeline %s: %s", pipeline.id, exc)
    if any(deleted.values()):
        log.info(
            "retention: deleted %d job(s) and %d pipeline(s) older than %g days",
            deleted["jobs"],
            deleted["pipelines"],
            settings.retention_days,
        )
    return deleted


ORPHAN_SWEEP_SECONDS = 600.0
"""The reaper looks for orphaned files at most this often (a walk of the tenants' upload folders)."""
_last_sweep = {"at": -math.inf}


def remove_orphans(settings: Settings, force: bool = False) -> dict[str, int]:
    """Remove what an interrupted upload or import left behind, once older than ``orphan_after_seconds``: files in
    this machine's ``.incoming`` folders, and — on the volume or in object storage — dataset folders no dataset row
    names and import uploads whose job is gone or ended (an API killed mid-extraction, or between storing an upload
    and recording it, leaves both). At most every ``ORPHAN_SWEEP_SECONDS`` unless ``force``."""
    now = time.monotonic()
    if not force and now - _last_sweep["at"] < ORPHAN_SWEEP_SECONDS:
        return {"files": 0, "folders": 0}
    _last_sweep["at"] = now
    store = artifact_store(settings)
    root = store.root
    cutoff = time.time() - settings.orphan_after_seconds
    removed = {"files": 0, "folders": 0}
    local = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    try:
        tenants = sorted(name for name in local | set(store.folders("")) if not name.startswith("."))
    except ArtifactStoreError as exc:
        log.warning("the orphan sweep could not list the artifact store: %s", exc)
        return removed
    with get_sessionmaker(settings.resolved_database_url)() as session:
        for tenant in tenants:
            for incoming in (root / tenant / "datasets" / ".incoming", root / tenant / IMPORTS_FOLDER / ".incoming"):
                for leftover in _old_entries(incoming, cutoff):
                    _remove(leftover, removed)
            known = {
                location.split("/")[2]
                for location in session.scalars(
                    select(Dataset.location).where(Dataset.tenant == tenant, Dataset.kind == "upload")
                )
                if location.count("/") >= 2
            }
            with _logged_store_error(f"the orphaned uploads of tenant {tenant}"):
                for name, changed in store.folders(f"{tenant}/datasets").items():
                    if changed < cutoff and not name.startswith(".") and name not in known:
                        store.delete_tree(f"{tenant}/datasets/{name}")
                        removed["folders"] += 1
                for name, changed in store.folders(f"{tenant}/{IMPORTS_FOLDER}").items():
                    if changed >= cutoff or name.startswith("."):
                        continue
                    try:
                        job = session.get(Job, uuid.UUID(name))
                    except ValueError:
                        job = None
                    if job is None or job.status in FINAL_STATUSES:
                        store.delete_tree(f"{tenant}/{IMPORTS_FOLDER}/{name}")
                        removed["folders"] += 1
    if any(removed.values()):
        log.info("orphans removed: %d file(s), %d folder(s)", removed["files"], removed["folders"])
    return removed


def _old_entries(folder: Path, cutoff: float) -> list[Path]:
    """The entries of ``folder`` last changed before ``cutoff`` (none when it does not exist)."""
    try:
        return [entry for entry in folder.iterdir() if entry.lstat().st_mtime < cutoff]
    except FileNotFoundError:
        return []


def _remove(path: Path, removed: dict[str, int]) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        removed["folders"] += 1
    else:
        path.unlink(missing_ok=True)
        removed["files"] += 1
