"""Helpers shared by the routes: field-named 422s, error bodies, cursors, idempotency and tenant paths."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import tuple_
from sqlalchemy.orm import Session

from layercut.api.deps import TenantDep
from layercut.artifacts import ArtifactStore
from layercut.contracts.callback_urls import AllowList, CallbackUrlRefused, check_callback_url
from layercut.contracts.errors import MissingResourceError
from layercut.jobs.retention import InUse
from layercut.settings import Settings


class ErrorOut(BaseModel):
    """Every non-validation error: a message saying what went wrong and what to do."""

    detail: str = Field(examples=["job 3f0c… not found"])


EVERY_V1_ROUTE = (405, 429, 503)
"""What any /v1 route may answer besides its own errors."""


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "bad request",
        401: "missing, unknown or revoked API key",
        403: "forbidden",
        404: "not found (or owned by another tenant)",
        409: "conflict with the object's state",
        413: "body or upload too large",
        405: "this path does not take this method (the Allow header lists those it does)",
        415: "unsupported upload",
        429: "too many requests: too many failed authentications from this address, or too many unfinished jobs "
        "of this tenant; wait for Retry-After seconds",
        503: "the server is busy (see Retry-After), or the database or the artifact store is unavailable; retry later",
        507: "the tenant's storage quota or the artifact volume is full; delete what you no longer need",
    }
    return {code: {"model": ErrorOut, "description": descriptions.get(code, "error")} for code in codes}


def field_error(loc: Sequence[str | int], msg: str, type_: str = "value_error") -> RequestValidationError:
    """A 422 shaped like FastAPI's own: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": type_, "input": None}])


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float as text ("nan", "inf"): JSON has no such numbers, and a 422 that
    echoes a NaN it refused must still be sent."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def link_for(request: Request, name: str, **params: str) -> str:
    """The URL of route ``name`` for an answer's body: under ``LAYERCUT_PUBLIC_URL`` when it is set, else relative to
    the server (``/v1/artifacts/…``). Never built from the request's ``Host`` header, which the caller chooses."""
    path = request.scope.get("root_path", "") + request.app.url_path_for(name, **params)
    settings_of = getattr(request.app.state, "settings_of", None)
    public = settings_of().public_url if settings_of is not None else None
    return public.rstrip("/") + path if public else path


def checked_callback_url(settings: Settings, url: Any) -> str | None:
    """The callback URL a job or pipeline was given, as text; a 422 on ``callback_url`` unless the service may post
    to it (``layercut.contracts.callback_urls``: http(s), no credentials, not too long, a public host or one the
    operator allowed). The job engine checks again at delivery, after resolving the name."""
    if url is None:
        return None
    text = str(url)
    try:
        check_callback_url(text, AllowList.parse(settings.callback_allowed_hosts.split(",")))
    except CallbackUrlRefused as exc:
        raise field_error(("body", "callback_url"), str(exc), "value_error") from None
    return text


def not_found(what: str, ident: Any) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} not found")


# --- idempotency -----------------------------------------------------------------------------------

IDEMPOTENCY_HEADER_DOC = (
    "Any string up to 200 characters. Repeating a request with the same key and the same body "
    "returns the resource the first request made (200); the same key with another body is a 422."
)


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise field_error(("header", "Idempotency-Key"), "an idempotency key is 1-200 printable characters")
    return key


def request_hash(payload: Any) -> str:
    """sha256 of the canonical JSON of a request (sorted keys, no spaces); NaN/inf are refused with a 422."""
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        raise field_error(("body",), "numbers must be finite (no NaN or infinity)") from None
    return hashlib.sha256(text.encode()).hexdigest()


def idempotency_mismatch() -> RequestValidationError:
    return field_error(
        ("header", "Idempotency-Key"),
        "this idempotency key was already used with a different request body; use a new key",
    )


# --- cursor pagination -----------------------------------------------------------------------------


JobId = Annotated[uuid.UUID, PathParam(description="the job's id (as POST /v1/jobs or a pipeline's steps gave it)")]
PipelineId = Annotated[uuid.UUID, PathParam(description="the pipeline's id (as POST /v1/pipelines gave it)")]
ModelId = Annotated[
    uuid.UUID, PathParam(description="the model version's id (a job's result.model_id, or GET /v1/models)")
]
DatasetId = Annotated[uuid.UUID, PathParam(description="the dataset's id (as POST /v1/datasets gave it)")]
ArtifactId = Annotated[uuid.UUID, PathParam(description="the artifact's id (from GET /v1/jobs/{job_id}/artifacts)")]
LimitQuery = Annotated[int, Query(ge=1, le=200, description="most items in this page")]
CursorQuery = Annotated[
    str | None, Query(max_length=500, description="next_cursor of the previous page (it keeps that page's sort)")
]
"""Path and paging parameters, declared once with what a generated client shows for them."""

Sort = Literal["-created_at", "created_at"]
SortQuery = Annotated[
    Sort,
    Query(
        description="-created_at: newest first (the default); created_at: oldest first",
        json_schema_extra={"x-enum-varnames": ["NEWEST_FIRST", "OLDEST_FIRST"]},
    ),
]
"""The order of every list; a cursor carries it, so the next page keeps it."""

ASCENDING = "asc"

LabelQuery = Annotated[
    list[str] | None,
    Query(max_length=20, description="key=value: only what carries this label; repeat to require several"),
]
LABEL_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


def with_labels(statement, model, labels: list[str] | None):
    """``statement`` narrowed to the rows whose labels hold every ``key=value`` given (422 on a malformed one)."""
    for given in labels or []:
        key, sep, value = given.partition("=")
        if not sep or not LABEL_KEY_PATTERN.match(key):
            raise field_error(("query", "label"), f"give label=key=value with a valid key; got {given[:80]!r}")
        statement = statement.where(model.labels[key].as_string() == value)
    return statement


def encode_cursor(created_at: datetime, ident: uuid.UUID, sort: Sort = "-created_at") -> str:
    raw = f"{created_at.isoformat()}|{ident}" + (f"|{ASCENDING}" if sort == "created_at" else "")
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID, Sort]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = raw.split("|")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != ASCENDING):
            raise ValueError(raw)
        created_at = datetime.fromisoformat(parts[0])
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=timezone.utc)
        sort: Sort = "created_at" if len(parts) == 3 else "-created_at"
        return created_at, uuid.UUID(parts[1]), sort
    except Exception:
        raise field_error(
            ("query", "cursor"), "invalid cursor: pass the next_cursor of a previous page unchanged"
        ) from None


def paginate(statement, model, cursor: str | None, limit: int, sort: Sort = "-created_at"):
    """Keyset pagination on (created_at, id), newest first unless ``sort`` is ``created_at``: the statement for
    limit + 1 rows. A cursor made for the other order is a 422."""
    ascending = sort == "created_at"
    keys = (model.created_at, model.id)
    statement = statement.order_by(*(key.asc() if ascending else key.desc() for key in keys))
    if cursor:
        created_at, ident, made_for = decode_cursor(cursor)
        if made_for != sort:
            raise field_error(("query", "cursor"), f"this cursor was made for sort={made_for}: pass that sort with it")
        after = tuple_(*keys) > tuple_(created_at, ident) if ascending else tuple_(*keys) < tuple_(created_at, ident)
        statement = statement.where(after)
    return statement.limit(limit + 1)


def page(rows: list, limit: int, sort: Sort = "-created_at") -> tuple[list, str | None]:
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].created_at, rows[-1].id, sort)
    return rows, None


def as_utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise field_error(("query", name), "date out of range") from None


# --- files -----------------------------------------------------------------------------------------


def tenant_root(settings: Settings, tenant: str) -> Path:
    """``artifact_root/<tenant>``, checked to stay inside the artifact root."""
    root = settings.resolved_artifact_root
    path = (root / tenant).resolve()
    if path == root or not path.is_relative_to(root):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "this tenant's name cannot be used as a folder")
    return path


def stored_file(settings: Settings, relative: str) -> Path:
    """A file named by a database row (never by the request), resolved and checked to stay in the artifact root."""
    root = settings.resolved_artifact_root
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the stored file is missing") from None
    if not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the stored file is missing")
    return path


PRESIGNED_REDIRECT = {
    "description": "with LAYERCUT_ARTIFACT_PRESIGNED_SECONDS set: the file is at the short-lived URL of the object "
    "store in the Location header"
}


def stored_download(settings: Settings, store: ArtifactStore, key: str, media_type: str, filename: str) -> Response:
    """A stored file as a download: from the volume (range requests and all), or streamed from object storage
    through the API (the store's address and credentials stay on the server), or — when presigned URLs are on — a
    307 to a short-lived URL of the store. 404 when it is gone."""
    if not store.remote:
        return FileResponse(stored_file(settings, key), media_type=media_type, filename=filename)
    try:
        if settings.artifact_presigned_seconds:
            url = store.presigned_url(key, filename, settings.artifact_presigned_seconds)
            if url is not None:
                return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
        stored = store.open(key)
    except MissingResourceError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the stored file is missing") from None
    return StreamingResponse(
        stored.blocks,
        media_type=media_type,
        headers={"Content-Length": str(stored.size), "Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _query_names(dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def strict_query(request: Request, _tenant: TenantDep) -> None:
    """(After the key check.) Refuse query parameters the route does not declare (a typo such as ``?staus=queued`` is a 422, not ignored)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    for name in request.query_params.keys():
        if name not in known:
            raise field_error(
                ("query", name),
                f"unknown query parameter {name!r}"
                + (f"; this route takes {', '.join(sorted(known))}" if known else ""),
                "extra_forbidden",
            )


@contextmanager
def conflict_when_in_use(session: Session) -> Iterator[None]:
    """A deletion refused because the object runs or unfinished work reads it (``retention.InUse``) becomes a 409
    saying which, with the session rolled back."""
    try:
        yield
    except InUse as exc:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
