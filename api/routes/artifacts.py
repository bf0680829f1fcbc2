"""Artifacts: the files a job wrote, listed per job and downloaded by id (paths come only from the database)."""

from __future__ import annotations

from pathlib import PurePosixPath

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import select

from layercut.api.common import PRESIGNED_REDIRECT, ArtifactId, JobId, error_responses, not_found, stored_download
from layercut.api.crud import artifact_out, get_tenant_job, job_artifacts
from layercut.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from layercut.api.schemas.artifacts import ArtifactOut
from layercut.store.models import Artifact

router = APIRouter(tags=["artifacts"])


@router.get(
    "/jobs/{job_id}/artifacts",
    response_model=list[ArtifactOut],
    responses=error_responses(401, 404),
    summary="List a job's artifacts",
)
def list_artifacts(request: Request, job_id: JobId, session: SessionDep, tenant: TenantDep) -> list[ArtifactOut]:
    """Every file the job recorded, with its kind, size, SHA-256 and download URL."""
    job = get_tenant_job(session, tenant, job_id)
    return [artifact_out(request, a) for a in job_artifacts(session, job)]


@router.get(
    "/artifacts/{artifact_id}",
    response_class=FileResponse,
    name="download_artifact",
    summary="Download an artifact",
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {},
                "image/png": {},
                "text/html": {},
                "text/csv": {},
                "text/markdown": {},
            },
            "description": "the file, with the content type stored for it",
        },
        307: PRESIGNED_REDIRECT,
        **error_responses(401, 404, 503),
    },
)
def download_artifact(
    artifact_id: ArtifactId, session: SessionDep, tenant: TenantDep, settings: SettingsDep, store: StoreDep
) -> Response:
    """The file as it was recorded: from the artifact volume, or streamed from object storage through the API (the
    store's endpoint and credentials stay on the server; the tenant check is the same)."""
    row = session.scalars(select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant == tenant)).first()
    if row is None:
        raise not_found("artifact", artifact_id)
    return stored_download(settings, store, row.path, row.content_type, PurePosixPath(row.path).name)
