"""The /ui dashboard: a static page that talks to the /v1 API with the caller's key.

The page (``api/ui_static/index.html``), its script and style sheet are plain files read with importlib.resources,
so they are served the same from a source checkout, an editable install and a wheel (the wheel needs them listed
as package data of ``layercut.api.ui_static``). No key is needed to load the page: it asks for one and sends it as
``Authorization: Bearer <key>`` on every /v1 request it makes. ``/ui/config.json`` gives the page the choices
the pipeline form offers (architectures, builtin datasets, limits), taken from the API's own schemas.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib.resources import files
from typing import Any, get_args

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse

from layercut.api.schemas.datasets import BuiltinDatasetCreate
from layercut.contracts.configs import ARCHITECTURE_NAMES, SelectConfig, TrainConfig
from layercut.contracts.jobs import DataParams

router = APIRouter(include_in_schema=False)

STATIC_PACKAGE = "layercut.api.ui_static"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

# The page loads only its own files and talks only to its own origin; no inline script runs. Reports are opened
# from blob: URLs, which inherit this policy, so the inline CSS and data: pictures of those self-contained pages stay
# allowed (they have no scripts). The dashboard itself never builds HTML from data (textContent only).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _read(name: str) -> bytes:
    try:
        return files(STATIC_PACKAGE).joinpath(name).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"dashboard file {name} is missing from this installation"
        ) from None


def _send(request: Request, body: bytes, media_type: str) -> Response:
    """The file with a strong ETag; ``no-cache`` so a new version is picked up at once (a 304 costs little)."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _schema_range(model: Any, field: str) -> dict[str, Any]:
    prop = model.model_json_schema()["properties"][field]
    return {"default": prop.get("default"), "min": prop.get("minimum"), "max": prop.get("maximum")}


@lru_cache
def _config() -> bytes:
    return json.dumps(
        {
            "architectures": list(ARCHITECTURE_NAMES),
            "default_architecture": "smallcnn",
            "builtins": list(get_args(BuiltinDatasetCreate.model_fields["builtin"].annotation)),
            "image_size": _schema_range(DataParams, "image_size"),
            "epochs": _schema_range(TrainConfig, "epochs"),
            "max_drop": _schema_range(SelectConfig, "max_drop"),
        }
    ).encode()


@router.get("/ui")
def dashboard(request: Request) -> Response:
    return _send(request, _read("index.html"), "text/html; charset=utf-8")


@router.get("/ui/")
def dashboard_slash() -> RedirectResponse:
    # Relative, so it also works behind a proxy that serves the API under a path prefix.
    return RedirectResponse("../ui", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/ui/config.json")
def dashboard_config(request: Request) -> Response:
    return _send(request, _config(), "application/json")


@router.get("/ui/{name}")
def dashboard_asset(request: Request, name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:  # a fixed list: no path from the request ever reaches the file system
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dashboard file {name!r}")
    return _send(request, _read(name), media_type)
