"""Model versions: list, get, download the checkpoint, import one trained elsewhere (weights + spec)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, HTTPException, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from layercut.api.common import (
    IDEMPOTENCY_HEADER_DOC,
    SortQuery,
    check_idempotency_key,
    conflict_when_in_use,
    error_responses,
    field_error,
    idempotency_mismatch,
    page,
    paginate,
    request_hash,
    stored_file,
    tenant_root,
)
from layercut.api.crud import check_dataset, get_tenant_model
from layercut.api.deps import SessionDep, SettingsDep, TenantDep
from layercut.api.safetensors_io import BadSafetensors, parameter_count, rewrite_with_metadata
from layercut.api.schemas.common import Page
from layercut.api.schemas.models import ImportSpec, ModelOut
from layercut.api.uploads import UploadRejected, save_upload
from layercut.contracts.spec import SPEC_KEY
from layercut.jobs import retention
from layercut.store.models import ModelVersion

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
        checkpoint_url=str(request.url_for("download_checkpoint", model_id=str(row.id))),
    )


@router.get("", response_model=Page[ModelOut], responses=error_responses(401), summary="List model versions")
def list_models(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    sort: SortQuery = "-created_at",
) -> Page[ModelOut]:
    statement = paginate(select(ModelVersion).where(ModelVersion.tenant == tenant), ModelVersion, cursor, limit, sort)
    rows, next_cursor = page(list(session.scalars(statement)), limit, sort)
    return Page[ModelOut](items=[model_out(request, r) for r in rows], next_cursor=next_cursor)


@router.api_route("/import", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def import_other_methods() -> None:
    """Keeps GET /v1/models/import from being read as a model id: 405, Allow: POST."""
    raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, "Method Not Allowed", headers={"Allow": "POST"})


@router.get("/{model_id}", response_model=ModelOut, responses=error_responses(401, 404), summary="Get a model version")
def get_model(request: Request, model_id: uuid.UUID, session: SessionDep, tenant: TenantDep) -> ModelOut:
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
        **error_responses(401, 404),
    },
)
def download_checkpoint(
    model_id: uuid.UUID, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> FileResponse:
    row = get_tenant_model(session, tenant, model_id)
    path = stored_file(settings, row.checkpoint)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{row.id}.safetensors")


@router.post(
    "/import",
    response_model=ModelOut,
    status_code=status.HTTP_201_CREATED,
    summary="Import a trained model",
    responses={
        200: {"model": ModelOut, "description": "an earlier request with this Idempotency-Key made it"},
        **error_responses(400, 401, 413),
    },
)
async def import_model(
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    weights: Annotated[UploadFile, File(description="a safetensors file of the model's state dict")],
    spec: Annotated[
        str,
        Form(
            description="JSON of the model spec: architecture, classes, image_size, mean, std "
            "(and optionally source_channels, pretrained, cut_point, head_dropout, data)",
            examples=[
                '{"architecture": "resnet18", "classes": ["cat", "dog"], "image_size": 64, '
                '"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}'
            ],
        ),
    ],
    dataset_id: Annotated[uuid.UUID | None, Form(description="the registered dataset it was trained on")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=IDEMPOTENCY_HEADER_DOC)] = None,
) -> ModelOut:
    """The weights are checked (header, dtypes, shapes and offsets consistent) and rewritten with the spec in the
    header's `__metadata__["layercut.spec"]`, the form layercut's own checkpoints have; the new model version is
    `source: "import"`, `trained: true`. The weights are not matched against the architecture here: the first job
    that loads the model does that."""
    key = check_idempotency_key(idempotency_key)
    try:
        parsed = ImportSpec.model_validate(json.loads(spec))
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            raise field_error(("body", "spec", *first["loc"]), first["msg"], first["type"]) from None
        raise field_error(("body", "spec"), "spec must be a JSON object") from None
    check_dataset(session, tenant, dataset_id, ("body", "dataset_id"))
    root = tenant_root(settings, tenant)
    try:
        upload, sha, size = await save_upload(weights, root / "models" / ".incoming", settings.upload_max_bytes)
    except UploadRejected as exc:
        raise HTTPException(exc.status_code, str(exc)) from None
    spec_json = parsed.model_dump_json()
    digest = request_hash(
        {
            "weights_sha256": sha,
            "spec": parsed.model_dump(mode="json"),
            "dataset_id": str(dataset_id) if dataset_id else None,
        }
    )
    model_id = uuid.uuid5(IMPORT_NAMESPACE, f"{tenant}\x00{key}") if key else uuid.uuid4()
    relative = f"{tenant}/models/{model_id}/model-{digest[:32]}.safetensors"
    target = settings.resolved_artifact_root / relative
    try:
        header = await asyncio.to_thread(rewrite_with_metadata, upload, target, {SPEC_KEY: spec_json})
    except BadSafetensors as exc:
        raise field_error(("body", "weights"), f"not a valid safetensors file: {exc}") from None
    finally:
        upload.unlink(missing_ok=True)
    row = ModelVersion(
        id=model_id,
        tenant=tenant,
        dataset_id=dataset_id,
        checkpoint=relative,
        architecture=parsed.architecture,
        classes=parsed.classes,
        image_size=parsed.image_size,
        params=parameter_count(header),
        trained=True,
        metrics={},
        cut_point=parsed.cut_point.model_dump() if parsed.cut_point else None,
        source="import",
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = session.scalars(
            select(ModelVersion).where(ModelVersion.id == model_id, ModelVersion.tenant == tenant)
        ).first()
        if key is None or existing is None:
            raise
        if existing.checkpoint != relative:  # the request hash is part of the stored file's name
            target.unlink(missing_ok=True)
            raise idempotency_mismatch() from None
        response.status_code = status.HTTP_200_OK
        return model_out(request, existing)
    return model_out(request, row)


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 409),
    summary="Delete an imported model",
)
def delete_model(model_id: uuid.UUID, session: SessionDep, settings: SettingsDep, tenant: TenantDep) -> Response:
    """Delete an imported model and its checkpoint. 409 while an unfinished job uses it; a model a job made is
    deleted with that job (or its pipeline)."""
    row = get_tenant_model(session, tenant, model_id)
    with conflict_when_in_use(session):
        retention.delete_model(session, row, settings.resolved_artifact_root)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
