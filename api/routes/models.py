"""Model versions: list, get, download the checkpoint, import one trained elsewhere (weights + spec)."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, HTTPException, Request, Response, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from layercut.api.common import (
    IDEMPOTENCY_HEADER_DOC,
    PRESIGNED_REDIRECT,
    CursorQuery,
    LimitQuery,
    ModelId,
    SortQuery,
    check_idempotency_key,
    conflict_when_in_use,
    error_responses,
    field_error,
    idempotency_mismatch,
    link_for,
    page,
    paginate,
    request_hash,
    stored_download,
    tenant_root,
)
from layercut.api.crud import check_capacity, check_dataset, dispatch, get_tenant_model, job_out
from layercut.api.deps import DispatcherDep, SessionDep, SettingsDep, StoreDep, TenantDep
from layercut.api.safetensors_io import BadSafetensors, weights_format
from layercut.api.schemas.common import Page
from layercut.api.schemas.jobs import JobOut
from layercut.api.schemas.models import ImportSpec, ModelOut
from layercut.api.uploads import UploadRejected, save_upload, tenant_quota
from layercut.contracts.files import IMPORTS_FOLDER, import_upload, weight_suffix
from layercut.contracts.jobs import ImportParams
from layercut.jobs import retention
from layercut.store.models import Job, ModelVersion

router = APIRouter(prefix="/models", tags=["models"])

IMPORT_NAMESPACE = uuid.UUID("5b0e7c52-3f0e-4f7a-9a55-6c8f0f0d1e21")


def model_out(request: Request, row: ModelVersion) -> ModelOut:
    return ModelOut(
        id=row.id,
        architecture=row.architecture,
        classes=list(row.classes or []),
        image_size=row.image_size,
        params=row.params,
        trained=row.trained,
        metrics=row.metrics or {},
        cut_point=row.cut_point,
        source=row.source,
        job_id=row.job_id,
        dataset_id=row.dataset_id,
        parent_id=row.parent_id,
        created_at=row.created_at,
        checkpoint_url=link_for(request, "download_checkpoint", model_id=str(row.id)),
    )


@router.get("", response_model=Page[ModelOut], responses=error_responses(401), summary="List model versions")
def list_models(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: SortQuery = "-created_at",
) -> Page[ModelOut]:
    """The tenant's model versions (trained, cut, retrained, imported), newest first unless ``sort=created_at``."""
    statement = paginate(select(ModelVersion).where(ModelVersion.tenant == tenant), ModelVersion, cursor, limit, sort)
    rows, next_cursor = page(list(session.scalars(statement)), limit, sort)
    return Page[ModelOut](items=[model_out(request, r) for r in rows], next_cursor=next_cursor)


@router.api_route("/import", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def import_other_methods() -> None:
    """Keeps GET /v1/models/import from being read as a model id: 405, Allow: POST."""
    raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, "Method Not Allowed", headers={"Allow": "POST"})


@router.get("/{model_id}", response_model=ModelOut, responses=error_responses(401, 404), summary="Get a model version")
def get_model(request: Request, model_id: ModelId, session: SessionDep, tenant: TenantDep) -> ModelOut:
    """One model version: architecture, classes, image size, parameters, cut point, metrics and lineage."""
    return model_out(request, get_tenant_model(session, tenant, model_id))


@router.get(
    "/{model_id}/checkpoint",
    response_class=FileResponse,
    summary="Download a checkpoint",
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the safetensors file (weights, with the spec in its header)",
        },
        307: PRESIGNED_REDIRECT,
        **error_responses(401, 404, 503),
    },
)
def download_checkpoint(
    model_id: ModelId, session: SessionDep, tenant: TenantDep, settings: SettingsDep, store: StoreDep
) -> Response:
    """The model's checkpoint as stored: weights, with the layercut spec in the safetensors header."""
    row = get_tenant_model(session, tenant, model_id)
    return stored_download(settings, store, row.checkpoint, "application/octet-stream", f"{row.id}.safetensors")


@router.post(
    "/import",
    response_model=JobOut,
    status_code=status.HTTP_201_CREATED,
    summary="Import a model trained elsewhere",
    responses={
        200: {"model": JobOut, "description": "an earlier request with this Idempotency-Key made it"},
        **error_responses(400, 401, 409, 413, 507),
    },
)
async def import_model(
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    dispatcher: DispatcherDep,
    weights: Annotated[
        UploadFile,
        File(
            description="the model's weights: a state dict saved with torch.save (.pt/.pth, read with "
            "weights_only=True, also inside a checkpoint dict under state_dict, model_state_dict, …) or a "
            "safetensors file"
        ),
    ],
    spec: Annotated[
        str,
        Form(
            description="JSON of the model spec: architecture, classes (in the order of the model's outputs), "
            "image_size, mean, std (and optionally source_channels, pretrained, cut_point, head_dropout, data)",
            examples=[
                '{"architecture": "resnet18", "classes": ["cat", "dog"], "image_size": 64, '
                '"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}'
            ],
        ),
    ],
    dataset_id: Annotated[uuid.UUID | None, Form(description="the registered dataset it was trained on")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=IDEMPOTENCY_HEADER_DOC)] = None,
) -> JobOut:
    """Store the weights and queue an `import` job, returned here. The spec is checked now (422 naming the field);
    the job then matches the weights key by key and shape by shape against the architecture and writes a layercut
    checkpoint: it ends `succeeded` with the new model's id in `result.model_id` (the model is `source: "import"`),
    or `failed` with the mismatched keys named. Poll `GET /v1/jobs/{id}`; later jobs and pipelines take the model's
    id (or `{"from_job": <this job's id>}`)."""
    key = check_idempotency_key(idempotency_key)
    try:
        parsed = ImportSpec.model_validate(json.loads(spec))
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            raise field_error(("body", "spec", *first["loc"]), first["msg"], first["type"]) from None
        raise field_error(("body", "spec"), "spec must be a JSON object") from None
    check_dataset(session, tenant, dataset_id, ("body", "dataset_id"))
    check_capacity(session, settings, tenant, 1, key, Job)
    root = tenant_root(settings, tenant)
    quota = await asyncio.to_thread(tenant_quota, store, tenant, settings.tenant_quota_bytes)
    try:
        upload, sha, size = await save_upload(
            weights, root / IMPORTS_FOLDER / ".incoming", settings.upload_max_bytes, quota
        )
    except UploadRejected as exc:
        raise HTTPException(exc.status_code, str(exc)) from None
    try:
        await asyncio.to_thread(weights_format, upload)
    except BadSafetensors as exc:
        upload.unlink(missing_ok=True)
        raise field_error(("body", "weights"), f"the weights file cannot be imported: {exc}") from None
    params = ImportParams(
        spec=parsed,
        dataset_id=dataset_id,
        weights_name=PurePath(weights.filename or "weights").name[:255],
        weights_suffix=weight_suffix(weights.filename),
        weights_sha256=sha,
        weights_bytes=size,
    )
    params_json = params.model_dump(mode="json")
    digest = request_hash({"params": params_json})
    job_id = uuid.uuid5(IMPORT_NAMESPACE, f"{tenant}\x00{key}") if key else uuid.uuid4()
    stored = store.path(import_upload(tenant, job_id, params.weights_suffix))
    job = Job(
        id=job_id,
        tenant=tenant,
        kind="import",
        status="queued",
        params=params_json,
        idempotency_key=key,
        request_hash=digest if key else None,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        upload.unlink(missing_ok=True)
        existing = session.scalars(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)).first()
        if key is None or existing is None:
            raise
        if existing.request_hash != digest:
            raise idempotency_mismatch() from None
        response.status_code = status.HTTP_200_OK
        return job_out(request, session, existing)
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        upload.replace(stored)
        await asyncio.to_thread(store.publish_file, stored)
        session.commit()
    except BaseException:
        session.rollback()
        upload.unlink(missing_ok=True)
        shutil.rmtree(stored.parent, ignore_errors=True)
        if store.remote:
            await asyncio.to_thread(store.delete_tree, store.key(stored.parent))
        raise
    store.release(stored.parent)  # with object storage the worker fetches the weights from the store
    dispatch(dispatcher, job.id, job.kind)
    response.headers["Location"] = link_for(request, "get_job", job_id=str(job.id))
    return job_out(request, session, job)


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 409),
    summary="Delete an imported model",
)
def delete_model(model_id: ModelId, session: SessionDep, store: StoreDep, tenant: TenantDep) -> Response:
    """Delete an imported model, its checkpoint and the import job that made it. 409 while an unfinished job uses
    it; a model another job made is deleted with that job (or its pipeline)."""
    row = get_tenant_model(session, tenant, model_id)
    with conflict_when_in_use(session):
        retention.delete_model(session, row, store)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
