"""Datasets: register a server folder (under the configured roots) or a builtin, upload an archive; list, get, delete.

Delete refuses with 409 while a queued or running job of the tenant names the dataset (no cascade: jobs and
models keep their history; a model's ``dataset_id`` becomes null). Deleting an uploaded dataset removes its
extracted files; a registered folder is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, File, Form, Header, HTTPException, Request, Response, UploadFile, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from layercut.api.common import (
    IDEMPOTENCY_HEADER_DOC,
    CursorQuery,
    DatasetId,
    LimitQuery,
    SortQuery,
    check_idempotency_key,
    error_responses,
    field_error,
    idempotency_mismatch,
    page,
    paginate,
    request_hash,
    tenant_root,
)
from layercut.api.crud import get_tenant_dataset
from layercut.api.dataset_scan import DatasetScanError, ScanResult, builtin_scan, scan_dataset
from layercut.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from layercut.api.schemas.common import Page
from layercut.api.schemas.datasets import BuiltinDatasetCreate, DatasetCreate, DatasetOut, FolderDatasetCreate
from layercut.api.uploads import (
    UploadRejected,
    dataset_root_in,
    extract_archive,
    extraction_slots,
    remove_tree,
    save_upload,
    tenant_quota,
)
from layercut.artifacts import ArtifactStore, ArtifactStoreError
from layercut.contracts.errors import without_root
from layercut.settings import Settings
from layercut.store.models import FINAL_STATUSES, Dataset, Job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/datasets", tags=["datasets"])

CREATE_EXAMPLES = {
    "folder": {
        "summary": "a folder under a dataset root",
        "value": {"kind": "folder", "path": "/data/datasets/flowers"},
    },
    "builtin": {"summary": "the offline textures set", "value": {"kind": "builtin", "builtin": "textures"}},
}
CREATED = {200: {"model": DatasetOut, "description": "an earlier request with this Idempotency-Key made it"}}


def dataset_out(row: Dataset) -> DatasetOut:
    counts = {s: {c: int(n) for c, n in per.items()} for s, per in (row.counts or {}).items()}
    info = row.info or {}
    return DatasetOut(
        id=row.id,
        name=row.name,
        kind=row.kind,
        classes=[str(c) for c in row.classes or []],
        counts=counts,
        total_images=sum(sum(p.values()) for p in counts.values()),
        layout=info.get("layout"),
        warnings=list(info.get("warnings", [])),
        created_at=row.created_at,
    )


def _insert(
    session: Session, row: Dataset, key: str | None, digest: str, response: Response, on_conflict=None
) -> DatasetOut:
    """Insert and commit; a repeated Idempotency-Key returns the original (same body) or is a 422 (other body)."""
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if on_conflict:
            on_conflict()
        existing = session.scalars(
            select(Dataset).where(Dataset.tenant == row.tenant, Dataset.idempotency_key == key)
        ).first()
        if key is None or existing is None:
            raise
        if existing.request_hash != digest:
            raise idempotency_mismatch() from None
        response.status_code = status.HTTP_200_OK
        return dataset_out(existing)
    return dataset_out(row)


def tenant_dataset_roots(settings: Settings, tenant: str) -> list[Path]:
    """The folders under which ``tenant`` may register datasets: its own folder, ``<root>/<tenant>``, of each
    dataset root (another tenant's folders, and anything else on the server, are out of its reach)."""
    roots = []
    for root in settings.dataset_roots:
        try:
            roots.append((Path(root) / tenant).resolve())
        except (OSError, RuntimeError):
            continue
    return roots


def resolve_registered_folder(settings: Settings, tenant: str, given: str) -> Path:
    """The real folder behind ``given`` (symlinks resolved); 422 on ``path`` unless it lies under one of the
    tenant's dataset roots. A path outside them gets the same answer whether or not it exists, and no answer names
    the server's folders."""
    loc = ("body", "path")
    if not settings.dataset_roots:
        raise field_error(
            loc,
            "this server has no dataset roots configured (LAYERCUT_DATASET_ROOTS); upload an archive instead",
            "forbidden",
        )
    not_yours = field_error(
        loc,
        f"{given!r} is not in your tenant's dataset folders: put the data under your tenant's folder of a dataset "
        "root on the server (the operator knows where; LAYERCUT_DATASET_ROOTS/<tenant>/), or upload an archive",
        "forbidden",
    )
    if not Path(given).is_absolute():
        raise field_error(loc, "give an absolute path")
    try:
        path = Path(given).resolve(strict=False)  # no existence check before the containment check
    except (OSError, RuntimeError, ValueError):
        raise not_yours from None
    if not any(path.is_relative_to(root) for root in tenant_dataset_roots(settings, tenant)):
        raise not_yours
    if not path.exists():
        raise field_error(loc, f"folder {given!r} does not exist in your dataset folders", "not_found")
    if not path.is_dir():
        raise field_error(loc, f"{given!r} is not a folder")
    return path


def _scan(folder: Path, loc: tuple, public: Callable[[str], str] = str) -> ScanResult:
    """The scan of ``folder``; a 422 on ``loc`` saying what is wrong (``public`` rewrites the message, e.g. to take
    the server's folders out of what an upload's error says)."""
    try:
        return scan_dataset(folder)
    except DatasetScanError as exc:
        raise field_error(loc, public(str(exc)), "bad_data") from None
    except OSError as exc:
        raise field_error(loc, public(f"the folder cannot be read: {exc.strerror or exc}")) from None


def _info(scan: ScanResult, **extra: Any) -> dict[str, Any]:
    return {"layout": scan.layout, "warnings": scan.warnings, **extra}


@router.post(
    "",
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    responses={**CREATED, **error_responses(400, 401)},
    summary="Register a folder or a builtin dataset",
)
def create_dataset(
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    body: Annotated[DatasetCreate, Body(openapi_examples=CREATE_EXAMPLES)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=IDEMPOTENCY_HEADER_DOC)] = None,
) -> DatasetOut:
    """`{"kind": "folder", "path": …}` registers a server folder that lies (after resolving symlinks) under the
    caller's tenant folder of one of the configured dataset roots (`<root>/<tenant>/…`); `{"kind": "builtin", "builtin": "textures" | "digits" | "scenes"}` an offline set
    (registered once per tenant: the same built-in again answers 200 with the existing dataset, unless a `name` is
    given). The folder is scanned (names only): the answer gives the classes and the image count per split and
    class."""
    key = check_idempotency_key(idempotency_key)
    digest = request_hash(body.model_dump(mode="json"))
    if isinstance(body, FolderDatasetCreate):
        folder = resolve_registered_folder(settings, tenant, body.path)
        scan = _scan(folder, ("body", "path"))
        row = Dataset(
            tenant=tenant,
            name=body.name or folder.name or "dataset",
            kind="folder",
            location=str(folder),
            classes=scan.classes,
            counts=scan.counts,
            info=_info(scan),
        )
    else:
        assert isinstance(body, BuiltinDatasetCreate)
        if body.name is None:  # the same built-in again is the same dataset (name one to register another copy)
            existing = session.scalars(
                select(Dataset)
                .where(
                    Dataset.tenant == tenant,
                    Dataset.kind == "builtin",
                    Dataset.location == body.builtin,
                    Dataset.name == body.builtin,
                )
                .order_by(Dataset.created_at)
            ).first()
            if existing is not None:
                response.status_code = status.HTTP_200_OK
                return dataset_out(existing)
        scan = builtin_scan(body.builtin)
        row = Dataset(
            tenant=tenant,
            name=body.name or body.builtin,
            kind="builtin",
            location=body.builtin,
            classes=scan.classes,
            counts=scan.counts,
            info=_info(scan),
        )
    row.id = uuid.uuid4()
    row.idempotency_key = key
    row.request_hash = digest if key else None
    return _insert(session, row, key, digest, response)


@router.post(
    "/upload",
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    responses={**CREATED, **error_responses(400, 401, 413, 415, 503, 507)},
    summary="Upload a zip or tar archive",
)
async def upload_dataset(
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[
        UploadFile,
        File(
            description="a .zip, .tar, .tar.gz, .tar.bz2 or .tar.xz of class folders, "
            "optionally under train/ val/ test/"
        ),
    ],
    name: Annotated[str | None, Form(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=IDEMPOTENCY_HEADER_DOC)] = None,
) -> DatasetOut:
    """The archive is streamed to disk (413 past LAYERCUT_UPLOAD_MAX_BYTES), then extracted member by member into
    the tenant's dataset folder. Absolute names, `..`, symbolic and hard links, devices and fifos are refused
    (422), as are archives with too many members, too many unpacked bytes or compressed more than
    LAYERCUT_UPLOAD_MAX_RATIO:1 (413, checked on the sizes the archive declares before anything is extracted).
    An upload that would take the tenant past LAYERCUT_TENANT_QUOTA_BYTES, or that finds the artifact volume full,
    is a 507; one that finds this server already extracting LAYERCUT_UPLOAD_MAX_CONCURRENT_EXTRACTIONS uploads
    waits for a turn, then is a 503 with Retry-After. A refused upload leaves nothing behind. A single top-level
    folder wrapping the data is looked through."""
    key = check_idempotency_key(idempotency_key)
    home = tenant_root(settings, tenant)
    base = home / "datasets"
    root = settings.resolved_artifact_root
    dataset_id = uuid.uuid4()
    dest = base / str(dataset_id)

    def public(message: str) -> str:  # names inside the archive, never the server's folders
        return without_root(without_root(message, dest.resolve(), "the archive"), root)

    slots = extraction_slots(request.app.state, settings.upload_max_concurrent_extractions)
    try:
        async with slots.taken(settings.upload_extraction_wait_seconds):
            quota = await asyncio.to_thread(tenant_quota, store, tenant, settings.tenant_quota_bytes)
            archive, sha, size = await save_upload(file, base / ".incoming", settings.upload_max_bytes, quota)
            try:
                await asyncio.to_thread(
                    extract_archive,
                    archive,
                    dest,
                    settings.upload_max_members,
                    settings.upload_max_unpacked_bytes,
                    settings.upload_max_ratio,
                    quota,
                )
                folder = dataset_root_in(dest.resolve())
                scan = await asyncio.to_thread(_scan, folder, ("body", "file"), public)
                await asyncio.to_thread(store.publish, dest)
            except BaseException:
                remove_tree(dest)
                await asyncio.to_thread(forget_upload, store, dest)
                raise
            finally:
                archive.unlink(missing_ok=True)
    except UploadRejected as exc:
        if exc.status_code == 422:
            raise field_error(("body", "file"), public(str(exc))) from None
        raise HTTPException(exc.status_code, public(str(exc)), headers=exc.headers) from None
    digest = request_hash({"sha256": sha, "size": size, "name": name})
    row = Dataset(
        id=dataset_id,
        tenant=tenant,
        name=name or Path(file.filename or "upload").name.split(".")[0] or "upload",
        kind="upload",
        location=folder.relative_to(root).as_posix(),
        classes=scan.classes,
        counts=scan.counts,
        info=_info(scan, archive_sha256=sha, archive_bytes=size),
        idempotency_key=key,
        request_hash=digest if key else None,
    )
    if not row.name or any(ord(c) < 32 for c in row.name):
        row.name = "upload"

    def forget() -> None:
        remove_tree(dest)
        forget_upload(store, dest)

    created = _insert(session, row, key, digest, response, on_conflict=forget)
    store.release(dest)  # with object storage the API keeps no copy: workers fetch the dataset from the store
    return created


def forget_upload(store: ArtifactStore, dest: Path) -> None:
    """Remove what an upload refused or superseded stored (object storage; the volume's copy is ``dest``)."""
    if store.remote:
        try:
            store.delete_tree(store.key(dest))
        except ArtifactStoreError as exc:
            log.warning("an abandoned upload was not removed from the artifact store: %s", exc)


@router.api_route("/upload", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def upload_other_methods() -> None:
    """Keeps GET /v1/datasets/upload from being read as a dataset id: 405, Allow: POST."""
    raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, "Method Not Allowed", headers={"Allow": "POST"})


@router.get("", response_model=Page[DatasetOut], responses=error_responses(401), summary="List datasets")
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    sort: SortQuery = "-created_at",
) -> Page[DatasetOut]:
    """The tenant's datasets (registered folders, builtins, uploads), newest first unless ``sort=created_at``."""
    statement = paginate(select(Dataset).where(Dataset.tenant == tenant), Dataset, cursor, limit, sort)
    rows, next_cursor = page(list(session.scalars(statement)), limit, sort)
    return Page[DatasetOut](items=[dataset_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(401, 404), summary="Get a dataset")
def get_dataset(dataset_id: DatasetId, session: SessionDep, tenant: TenantDep) -> DatasetOut:
    """One dataset: its kind, classes and image counts per split, and what the scan of its files found."""
    return dataset_out(get_tenant_dataset(session, tenant, dataset_id))


def _uses(params: dict, dataset_id: str) -> bool:
    data = params.get("data") if isinstance(params.get("data"), dict) else {}
    return params.get("dataset_id") == dataset_id or data.get("dataset_id") == dataset_id


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 409),
    summary="Delete a dataset",
)
def delete_dataset(
    dataset_id: DatasetId, session: SessionDep, tenant: TenantDep, settings: SettingsDep, store: StoreDep
) -> Response:
    """409 while a queued or running job uses the dataset. An uploaded dataset's files are removed; a registered
    folder is left as it is."""
    row = get_tenant_dataset(session, tenant, dataset_id)
    active = session.scalars(select(Job).where(Job.tenant == tenant, Job.status.notin_(FINAL_STATUSES))).all()
    users = [j.id for j in active if _uses(j.params or {}, str(dataset_id))]
    if users:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"dataset {dataset_id} is used by unfinished job(s) "
            f"{', '.join(map(str, users[:5]))}; cancel them or wait for them to end",
        )
    session.delete(row)
    session.commit()
    if row.kind == "upload":
        remove_tree(tenant_root(settings, tenant) / "datasets" / str(dataset_id))
        forget_upload(store, tenant_root(settings, tenant) / "datasets" / str(dataset_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
