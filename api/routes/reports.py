"""HTML reports: one self-contained page per job and per pipeline.

Rendered on request from the job rows and the files under ``<artifact_root>/<tenant>/<job id>/`` (folders
named by the rows, never by the request), so a pipeline still running shows the steps finished so far and
says which are running or queued. No torch: ``layercut.report`` is stdlib only.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from layercut.api.common import EVERY_V1_ROUTE, JobId, PipelineId, error_responses, tenant_root
from layercut.api.crud import (
    derived_status,
    find_tenant_dataset,
    get_tenant_job,
    get_tenant_pipeline,
    job_artifacts,
    pipeline_jobs,
)
from layercut.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from layercut.artifacts import ArtifactStore
from layercut.contracts.errors import MissingResourceError
from layercut.report import SUBTITLE, StageInput, render_report
from layercut.settings import Settings
from layercut.store.models import Job

router = APIRouter(tags=["reports"])

HTML_200 = {
    "description": "a self-contained HTML page (pictures embedded, inline CSS, no scripts or external references) "
    "that works offline and printed",
    "content": {"text/html": {"schema": {"type": "string"}}},
}


def _json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``error_responses`` documented as JSON: with ``response_class=HTMLResponse`` FastAPI would file a ``model``
    under text/html, but the errors are JSON bodies (``ErrorOut``, a component every other route registers)."""
    return {
        code: {
            "description": spec["description"],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
        }
        for code, spec in error_responses(*codes).items()
    }


ERRORS = _json_errors(401, 404, *EVERY_V1_ROUTE)


def _tenant_folder(settings: Settings, tenant: str) -> Path | None:
    try:
        return tenant_root(settings, tenant)
    except HTTPException:  # a tenant name that cannot be a folder has no files: every stage shows as missing
        return None


def stage_input(tenant_folder: Path | None, job: Job) -> StageInput:
    """What the report needs of one job: its folder (``<tenant folder>/<job id>``), result, status and progress."""
    folder = None
    if tenant_folder is not None:
        candidate = tenant_folder / str(job.id)
        try:
            if candidate.resolve().is_relative_to(tenant_folder):
                folder = candidate
        except (OSError, RuntimeError, ValueError):
            folder = None
    where = f"step {job.step + 1}: job {job.id}" if job.step is not None else f"job {job.id}"  # 1-based, as in /ui
    return StageInput(
        kind=job.kind,
        folder=folder,
        summary=job.result if isinstance(job.result, dict) else None,
        status=job.status,
        label=where,
        params=job.params if isinstance(job.params, dict) else None,
        step=job.step,
        percent=round(max(0.0, min(1.0, job.progress or 0.0)) * 100, 2),
        stage=job.stage,
        message=job.message,
        error_code=job.error_code,
        error_message=job.error_message,
    )


SHOWN_KINDS = ("metrics", "analysis", "image", "report")
"""The artifacts a report reads (JSON and pictures); checkpoints and GBP maps stay in the store."""


def fetch_shown_files(session: Session, store: ArtifactStore, jobs: Sequence[Job]) -> None:
    """With object storage, bring the files the report shows onto this machine first (checked against their
    recorded SHA-256; cached for the next request)."""
    if not store.remote:
        return
    for job in jobs:
        for artifact in job_artifacts(session, job):
            if artifact.kind in SHOWN_KINDS:
                try:
                    store.local(artifact.path, size=artifact.bytes, sha256=artifact.sha256)
                except MissingResourceError:
                    continue  # the section says what is missing


def _when(value: Any) -> str | None:
    return f"{value:%Y-%m-%d %H:%M:%S %Z}".strip() if value is not None else None


def _dataset_name(session: Session, tenant: str, dataset_id: Any) -> str | None:
    try:
        ident = uuid.UUID(str(dataset_id))
    except (TypeError, ValueError):
        return None
    row = find_tenant_dataset(session, tenant, ident)
    return f"{row.name} ({row.id})" if row is not None else str(ident)


@router.get(
    "/jobs/{job_id}/report",
    response_class=HTMLResponse,
    summary="HTML report of a job",
    responses={200: HTML_200, **ERRORS},
)
def get_job_report(
    job_id: JobId, session: SessionDep, tenant: TenantDep, settings: SettingsDep, store: StoreDep
) -> HTMLResponse:
    """The job's outputs as one self-contained HTML page (e.g. a train job: its data, metrics and pictures). A job
    that has not finished says so; a failed one shows its error."""
    job = get_tenant_job(session, tenant, job_id)
    fetch_shown_files(session, store, [job])
    details = [("Job", str(job.id)), ("Kind", job.kind), ("Status", job.status)]
    if job.pipeline_id is not None:
        details.append(("Pipeline", f"{job.pipeline_id} (step {job.step + 1 if job.step is not None else '?'})"))
    details += [("Created", _when(job.created_at)), ("Finished", _when(job.finished_at))]
    page = render_report(
        [stage_input(_tenant_folder(settings, tenant), job)],
        f"{job.kind} job {job.id}",
        subtitle=f"a {job.kind} job of tenant {tenant}",
        details=details,
        status=job.status,
    )
    return HTMLResponse(page)


@router.get(
    "/pipelines/{pipeline_id}/report",
    response_class=HTMLResponse,
    summary="HTML report of a pipeline",
    responses={200: HTML_200, **ERRORS},
)
def get_pipeline_report(
    pipeline_id: PipelineId, session: SessionDep, tenant: TenantDep, settings: SettingsDep, store: StoreDep
) -> HTMLResponse:
    """The whole pipeline on one self-contained HTML page: the data, the base model and its metrics, the GBP maps
    across depth, the SSIM curve and the knee, what was cut and why, the slim model, the comparison table and the
    explanations. While it runs, the steps finished so far are shown and the others say they are running or queued."""
    row = get_tenant_pipeline(session, tenant, pipeline_id)
    steps = pipeline_jobs(session, row)
    fetch_shown_files(session, store, steps)
    folder = _tenant_folder(settings, tenant)
    params = row.params if isinstance(row.params, dict) else {}
    dataset_id = (params.get("data") or {}).get("dataset_id") if isinstance(params.get("data"), dict) else None
    status = derived_status(steps)
    details = [
        ("Pipeline", str(row.id)),
        ("Status", status),
        ("Steps", " → ".join(j.kind for j in steps) or "none"),
        ("Requested architecture", params.get("arch") if params.get("model_id") is None else None),
        ("Started from model", params.get("model_id")),
        ("Dataset", _dataset_name(session, tenant, dataset_id) if dataset_id else None),
        ("Created", _when(row.created_at)),
        ("Finished", _when(row.finished_at)),
    ]
    page = render_report(
        [stage_input(folder, j) for j in steps], f"Pipeline {row.id}", subtitle=SUBTITLE, details=details, status=status
    )
    return HTMLResponse(page)
