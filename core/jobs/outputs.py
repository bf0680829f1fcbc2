"""Recording what a job made: an Artifact row per file in its folder, a ModelVersion for the checkpoint it wrote,
and its result made safe for a JSON column."""

from __future__ import annotations

import json
import math
import mimetypes
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.orm import Session

from layercut.artifacts import PARTIAL_SUFFIXES, file_sha256
from layercut.contracts.errors import without_root
from layercut.contracts.files import ANALYSIS_JSON, ARTIFACT_KINDS, ArtifactKind
from layercut.contracts.spec import ModelSpec
from layercut.store.models import Artifact, Job, ModelVersion

mimetypes.add_type("application/octet-stream", ".safetensors")
mimetypes.add_type("application/octet-stream", ".npz")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
REPORT_SUFFIXES = (".json", ".csv", ".html", ".md", ".txt")


@dataclass
class ProducedModel:
    """A checkpoint a stage wrote, with the spec in its header, to become a ModelVersion row."""

    path: Path
    spec: ModelSpec
    trained: bool
    dataset_id: uuid.UUID | None
    parent_id: uuid.UUID | None
    params: int
    metrics: dict[str, Any]


def artifact_kind(path: Path) -> ArtifactKind:
    """checkpoint | metrics | analysis | maps | image | report | other, by file name and extension."""
    if path.name in ARTIFACT_KINDS:
        return ARTIFACT_KINDS[path.name]
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "checkpoint"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in REPORT_SUFFIXES:
        return "report"
    return "other"


def record_outputs(
    session: Session, job: Job, out: Path, root: Path, produced: ProducedModel | None
) -> uuid.UUID | None:
    """Insert an Artifact row per file under ``out`` and a ModelVersion for the checkpoint made (one transaction);
    rows of an earlier attempt are replaced. Returns the new model's id, if one was made."""
    session.execute(delete(Artifact).where(Artifact.job_id == job.id))
    session.execute(delete(ModelVersion).where(ModelVersion.job_id == job.id))
    relative_json_files(out, root)
    for path in sorted(p for p in out.rglob("*") if p.is_file() and not p.name.endswith(PARTIAL_SUFFIXES)):
        session.add(artifact_row(job, path, root))
    model_id = None
    if produced is not None:
        model = model_row(job, produced, root)
        session.add(model)
        session.flush()
        model_id = model.id
    session.commit()
    return model_id


KEPT_AS_WRITTEN = (ANALYSIS_JSON,)
"""JSON files later stages read back by path (the analysis): left as the stage wrote them."""


def relative_json_files(out: Path, root: Path) -> None:
    """Rewrite the JSON files of a job's folder (compare.json, metrics.json …) with every path under the artifact
    root made relative to it, as the job's result names them: the API serves these files to the tenant, who has no
    business knowing the server's folders. Before the files are hashed, so the listed sha256 is the served file's."""
    prefix = str(root) + os.sep
    for path in sorted(out.rglob("*.json")):
        if path.name in KEPT_AS_WRITTEN or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if prefix not in text:
                continue
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        path.write_text(json.dumps(_without_root(data, root), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _without_root(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        return {k: _without_root(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_root(v, root) for v in value]
    return without_root(value, root) if isinstance(value, str) else value


def artifact_row(job: Job, path: Path, root: Path) -> Artifact:
    """The Artifact row of one file the job wrote (path relative to the artifact root)."""
    return Artifact(
        tenant=job.tenant,
        job_id=job.id,
        path=path.relative_to(root).as_posix(),
        kind=artifact_kind(path),
        bytes=path.stat().st_size,
        sha256=file_sha256(path),
        content_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
    )


def model_row(job: Job, produced: ProducedModel, root: Path) -> ModelVersion:
    """The ModelVersion row of the checkpoint a job made, described by the spec in its header."""
    spec = produced.spec
    return ModelVersion(
        tenant=job.tenant,
        job_id=job.id,
        dataset_id=produced.dataset_id,
        parent_id=produced.parent_id,
        checkpoint=produced.path.relative_to(root).as_posix(),
        architecture=spec.architecture,
        classes=list(spec.classes),
        image_size=spec.image_size,
        params=int(produced.params),
        trained=produced.trained,
        metrics=jsonable(produced.metrics, root),
        cut_point=spec.cut_point.model_dump() if spec.cut_point else None,
        source="import" if job.kind == "import" else "job",
    )


def job_result(result: BaseModel, root: Path) -> dict[str, Any]:
    """A stage's typed result as the job row stores it: its JSON dump (keys by alias, optional keys left out as in
    its file), with non-finite floats as null and artifact paths relative to the artifact root."""
    stored: dict[str, Any] = jsonable(result.model_dump(mode="json"), root)
    return stored


def jsonable(value: Any, root: Path) -> Any:
    """A copy safe for a JSON column: numpy scalars unwrapped, NaN/inf → None, artifact paths made relative."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, root) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            value = value.tolist() if hasattr(value, "tolist") else str(value)
            return jsonable(value, root)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        prefix = str(root) + os.sep
        return value[len(prefix) :] if value.startswith(prefix) else value
    if value is None or isinstance(value, (bool, int)):
        return value
    return str(value)
