"""Artifacts: the files a job wrote, listed per job and downloaded by id (paths come only from the database)."""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse, Response, StreamingResponse
from sqlalchemy import select

from layercut.api.common import error_responses, not_found, stored_file
from layercut.api.crud import artifact_out, get_tenant_job, job_artifacts
from layercut.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from layercut.api.schemas.artifacts import ArtifactOut
from layercut.contracts.errors import MissingResourceError
from layercut.store.models import Artifact

router = APIRouter(tags=["artifacts"])


@router.get(
    "/jobs/{job_id}/artifacts",
    response_model=list[ArtifactOut],
    responses=error_responses(401, 404),
    summary="List a job's artifacts",
)
def list_artifacts(request: Request, job_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> list[ArtifactOut]:
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
        **error_responses(401, 404, 503),
    },
)
def download_artifact(
    artifact_id: uuid.UUID, session: SessionDep, tenant: TenantDep, settings: SettingsDep, store: StoreDep
) -> Response:
    """The file as it was recorded: from the artifact volume, or streamed from object storage through the API (the
    store's endpoint and credentials stay on the server; the tenant check is the same)."""
    row = session.scalars(select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant == tenant)).first()
    if row is None:
        raise not_found("artifact", artifact_id)
    if not store.remote:
        path = stored_file(settings, row.path)
        return FileResponse(path, media_type=row.content_type, filename=path.name)
    try:
        stored = store.open(row.path)
    except MissingResourceError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the stored file is missing") from None
    name = PurePosixPath(row.path).name
    return StreamingResponse(
        stored.blocks,
        media_type=row.content_type,
        headers={"Content-Length": str(stored.size), "Content-Disposition": f'attachment; filename="{name}"'},
    )
