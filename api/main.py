"""The layercut HTTP service: ``create_app(settings)`` builds it; ``app`` is the one uvicorn serves.

No torch here: jobs are sent to workers by task name (see docs/design.md §2).
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from layercut import __version__
from layercut.api.common import EVERY_V1_ROUTE, error_responses, finite_json, strict_query
from layercut.api.deps import settings_dep
from layercut.api.limits import GuardRequests, SecurityHeaders
from layercut.api.observe import RequestContext
from layercut.api.routes import artifacts, datasets, health, jobs, models, pipelines, reports, ui
from layercut.artifacts import ArtifactStoreError
from layercut.contracts.errors import LayercutError, StorageFull, disk_full
from layercut.contracts.kinds import STAGE_KINDS
from layercut.jobs.service import get_dispatcher
from layercut.settings import Settings, get_settings
from layercut.telemetry import configure_logging

log = logging.getLogger("layercut.api")


DESCRIPTION = """
Slim image classifiers to the smallest model that keeps their accuracy: see what every layer learned (guided
backprop, SSIM between depths, the knee, depth probes), cut where the retrained slim model stays within the accuracy
budget (or at the knee), retrain, and compare — with the evidence.

* **Auth**: every `/v1` route needs `Authorization: Bearer <key>` (make one with `layercut keys create --tenant T`).
  Objects of another tenant are 404.
* **Jobs** run on workers; poll `GET /v1/jobs/{id}` and download artifacts through the API.
* **Idempotency**: send `Idempotency-Key` on creating POSTs; a retry with the same key and body returns the
  original (200), another body with the same key is a 422.
* **Lists** are newest first with cursor pagination: pass `next_cursor` back as `cursor`.
* **Errors**: 422 bodies name the field in `detail[].loc`; other errors are `{"detail": "message"}`.
"""

TAGS = [
    {"name": "datasets", "description": "register a server folder or a builtin, or upload an archive"},
    {"name": "jobs", "description": "one stage of the pipeline: " + ", ".join(STAGE_KINDS)},
    {"name": "pipelines", "description": "the whole pipeline as linked jobs"},
    {"name": "models", "description": "model versions, checkpoints, imports"},
    {"name": "artifacts", "description": "files the jobs wrote"},
    {"name": "reports", "description": "self-contained HTML reports of jobs and pipelines"},
    {"name": "health", "description": "liveness and readiness, no key"},
]


def _openapi(app: FastAPI) -> dict:
    """FastAPI's OpenAPI document, once, with file fields declared as ``format: binary`` too (OpenAPI 3.0 style,
    beside 3.1's ``contentMediaType``), so that client generators send them as files."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)  # builds and caches app.openapi_schema; the loop below edits it in place
        for component in schema.get("components", {}).get("schemas", {}).values():
            for prop in component.get("properties", {}).values():
                if prop.get("type") == "string" and prop.get("contentMediaType") == "application/octet-stream":
                    prop["format"] = "binary"
    return app.openapi_schema


def _path_table(app: FastAPI) -> list[tuple[str, re.Pattern[str], set[str]]]:
    """Every path template of the OpenAPI document, its pattern and its methods (built once per app)."""
    table = getattr(app.state, "path_table", None)
    if table is None:
        table = [
            (
                template,
                re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"),
                {m.upper() for m in operations if m in ("get", "post", "put", "patch", "delete")},
            )
            for template, operations in app.openapi().get("paths", {}).items()
        ]
        app.state.path_table = table
    return table


def _allowed_methods(app: FastAPI, path: str) -> set[str]:
    """Every method the OpenAPI document lists for ``path`` (Starlette names only the first matching route's)."""
    matches = [(template.count("{"), methods) for template, pattern, methods in _path_table(app) if pattern.match(path)]
    if not matches:
        return set()
    fewest = min(n for n, _ in matches)  # a literal path (/v1/models/import) beats a template (/v1/models/{id})
    return set().union(*(methods for n, methods in matches if n == fewest))


def _route_template(app: FastAPI, path: str) -> str | None:
    """The OpenAPI path template a request path answers to (``/v1/jobs/{job_id}``), the most literal when several
    match; None for a path outside the OpenAPI document."""
    matches = [(template.count("{"), template) for template, pattern, _ in _path_table(app) if pattern.match(path)]
    return min(matches)[1] if matches else None


def create_app(settings: Settings | None = None, run_embedded_jobs: bool = True) -> FastAPI:
    """The API. With no broker configured (embedded) it also runs jobs in-process, unless ``run_embedded_jobs``
    is False (tests that check the API alone)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        resolved = settings or get_settings()
        configure_logging(resolved.log_format, resolved.log_level)
        resolved.refuse_insecure_defaults("the API")
        if resolved.embedded and run_embedded_jobs:
            # Embedded mode runs jobs in this process: start the executor and its reaper now, so jobs
            # left running by a crash are recovered without waiting for the next submission.
            get_dispatcher(resolved)
        yield

    # /docs and /redoc from files installed with fastapi-offline, not a CDN: they work on a machine offline.
    app = FastAPIOffline(
        title="layercut",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        # operationId = the route function's name (create_pipeline, not create_pipeline_v1_pipelines_post): the
        # method names of a generated client
        generate_unique_id_function=lambda route: route.name,
    )
    app.openapi = lambda: _openapi(app)
    if settings is not None:
        app.dependency_overrides[settings_dep] = lambda: settings

    def settings_of() -> Settings:
        """The settings the routes see (a test may override ``settings_dep`` after the app is built)."""
        override = app.dependency_overrides.get(settings_dep)
        found = override() if override is not None else None
        if isinstance(found, Settings):
            return found
        return settings if settings is not None else get_settings()

    app.state.settings_of = settings_of  # for links built outside a route's dependencies (``common.link_for``)
    # Innermost first: the key and body checks, then the headers every answer carries, then the request's log line.
    app.add_middleware(GuardRequests, settings_of=settings_of)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestContext, route_of=lambda path: _route_template(app, path))

    app.include_router(health.router)
    for module in (datasets, jobs, pipelines, models, artifacts, reports):
        app.include_router(
            module.router,
            prefix="/v1",
            dependencies=[Depends(strict_query)],
            responses=error_responses(*EVERY_V1_ROUTE),
        )
    app.include_router(ui.router)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # Starlette names only the first matching route's methods; list every route's on this path.
            allowed = _allowed_methods(app, request.url.path)
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer, with what JSON cannot carry (NaN, infinity: a 422 about them echoed them) as text
        errors = jsonable_encoder(exc.errors())
        try:
            detail = finite_json(errors)
        except RecursionError:  # an input nested too deeply to walk again: the errors without their inputs
            detail = [{k: v for k, v in error.items() if k != "input"} for error in errors]
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(RecursionError)
    async def _too_deep(_request: Request, _exc: RecursionError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the request is nested too deeply (lists or objects within each other); send a flatter one"},
            status_code=status.HTTP_400_BAD_REQUEST,
        )

    @app.exception_handler(LayercutError)
    async def _layercut_error(_request: Request, exc: LayercutError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "code": getattr(exc, "code", "invalid_input")}, status_code=status.HTTP_400_BAD_REQUEST
        )

    @app.exception_handler(ArtifactStoreError)
    async def _store_down(_request: Request, exc: ArtifactStoreError) -> JSONResponse:
        log.error("artifact store error: %s", exc)
        return JSONResponse(
            {"detail": "the artifact store is unavailable; retry later", "code": ArtifactStoreError.code},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "10"},
        )

    @app.exception_handler(StorageFull)
    async def _storage_full(_request: Request, exc: StorageFull) -> JSONResponse:
        # what the caller sent is fine: the volume (or its disk quota) is full; the route removed what it had written
        log.error("the artifact volume is full: %s", exc)
        return JSONResponse(
            {"detail": StorageFull().args[0], "code": StorageFull.code},
            status_code=status.HTTP_507_INSUFFICIENT_STORAGE,
        )

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        """A write that found the disk full (ENOSPC, EDQUOT), wherever a route met it, is a 507 naming no server
        path; any other OSError goes on to the usual 500."""
        if not disk_full(exc):
            raise exc
        return await _storage_full(request, StorageFull())

    @app.exception_handler(IntegrityError)
    async def _integrity_error(_request: Request, exc: IntegrityError) -> JSONResponse:
        log.warning("integrity error: %s", exc.orig)
        return JSONResponse(
            {"detail": "the request conflicts with the stored state; retry it"}, status_code=status.HTTP_409_CONFLICT
        )

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", exc.orig)
        return JSONResponse(
            {"detail": "the database is unavailable; retry later"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )

    return app


app = create_app()
