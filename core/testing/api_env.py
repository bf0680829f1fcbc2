"""The API tests' environment: an app on the session's Postgres, fresh folders, two tenants, a recording dispatcher."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from layercut.api.deps import dispatcher_dep, settings_dep
from layercut.api.main import create_app
from layercut.contracts.configs import TruncateConfig
from layercut.contracts.jobs import ModelRef, TruncateParams
from layercut.contracts.results import TruncateResult
from layercut.contracts.spec import CutPointRef
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.keys import create_key
from layercut.store.models import Artifact, Job, ModelVersion

FINISHED_PARAMS = TruncateParams(model=ModelRef(model_id=uuid.UUID(int=7)), truncate=TruncateConfig(cut="3"))
"""The params of ``ApiEnv.finished_job``'s jobs."""

FINISHED_RESULT = TruncateResult(
    stage="truncate",
    checkpoint="slim/model.safetensors",
    cut_point=CutPointRef(index=3, name="layer2.0"),
    chosen_by="user",
    base_params=11_000,
    slim_params=2_750,
    params_kept=0.25,
    cut_points_total=9,
)
"""The result of ``ApiEnv.finished_job``'s succeeded jobs."""


class RecordingDispatcher:
    """Stands in for the API's dispatcher (``layercut.api.deps.dispatcher_dep``): records (job id, kind); can be
    told to fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[uuid.UUID, str]] = []
        self.fail = False

    def dispatch(self, job_id: uuid.UUID, kind: str) -> None:
        if self.fail:
            raise RuntimeError("broker down")
        self.sent.append((job_id, kind))


@dataclass
class Env:
    settings: Settings
    app: Any
    client: TestClient
    dispatcher: RecordingDispatcher
    url: str
    tmp: Path
    tenant: str
    other_tenant: str
    key: str
    other_key: str
    headers: dict[str, str] = field(default_factory=dict)
    other_headers: dict[str, str] = field(default_factory=dict)

    def session(self):
        return get_sessionmaker(self.url)()

    # --- builders --------------------------------------------------------------------------------
    def image_folder(self, name: str = "ds", classes=("cat", "dog"), per_class: int = 3, split: bool = False) -> Path:
        """A folder of (fake) images in the tenant's own folder of the dataset root, where it may register it."""
        root = self.tmp / "roots" / self.tenant / name
        for split_name in ("train", "val") if split else ("",):
            for c in classes:
                folder = root / split_name / c if split_name else root / c
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    (folder / f"{i}.png").write_bytes(b"\x89PNG fake")
        return root

    def dataset(self, headers: dict | None = None) -> str:
        """A new dataset of the tenant: the built-in textures under a name of its own (the same built-in without
        a name is registered once)."""
        body = {"kind": "builtin", "builtin": "textures", "name": f"textures-{uuid.uuid4().hex[:8]}"}
        response = self.client.post("/v1/datasets", json=body, headers=headers or self.headers)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def model(self, tenant: str | None = None, content: bytes = b"weights", made_by: str | None = None) -> str:
        """A model version with its checkpoint file: imported, or the output of job ``made_by`` (in its folder)."""
        tenant = tenant or self.tenant
        model_id = uuid.uuid4()
        relative = (
            f"{tenant}/{made_by}/model.safetensors" if made_by else f"{tenant}/models/{model_id}/model.safetensors"
        )
        path = self.settings.resolved_artifact_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        with self.session() as s:
            s.add(
                ModelVersion(
                    id=model_id,
                    tenant=tenant,
                    job_id=uuid.UUID(made_by) if made_by else None,
                    checkpoint=relative,
                    architecture="smallcnn",
                    classes=["a", "b"],
                    image_size=32,
                    params=10,
                    trained=True,
                    metrics={},
                    source="job",
                )
            )
            s.commit()
        return str(model_id)

    def finished_job(
        self,
        tenant: str | None = None,
        status: str = "succeeded",
        artifacts: dict[str, tuple[bytes, str]] | None = None,
    ) -> str:
        """A finished truncate job written straight to the database (no worker): typed params, and when it
        succeeded a typed result, as a real one would store them."""
        tenant = tenant or self.tenant
        job_id = uuid.uuid4()
        with self.session() as s:
            s.add(
                Job(
                    id=job_id,
                    tenant=tenant,
                    kind="truncate",
                    status=status,
                    params=FINISHED_PARAMS.model_dump(mode="json"),
                    progress=1.0,
                    result=FINISHED_RESULT.model_dump(mode="json") if status == "succeeded" else None,
                )
            )
            s.flush()
            for name, (data, content_type) in (artifacts or {}).items():
                relative = f"{tenant}/{job_id}/{name}"
                path = self.settings.resolved_artifact_root / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                s.add(
                    Artifact(
                        tenant=tenant,
                        job_id=job_id,
                        path=relative,
                        kind="other",
                        bytes=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                        content_type=content_type,
                    )
                )
            s.commit()
        return str(job_id)


def make_env(postgres_url: str, tmp_path: Path, **overrides: Any) -> Env:
    (tmp_path / "roots").mkdir(parents=True, exist_ok=True)
    settings = Settings(
        database_url=postgres_url, artifact_root=tmp_path / "artifacts", dataset_roots=[tmp_path / "roots"], **overrides
    )
    app = create_app(settings, run_embedded_jobs=False)  # dispatch is faked: no executor, no reaper
    app.dependency_overrides[settings_dep] = lambda: settings
    dispatcher = RecordingDispatcher()
    app.dependency_overrides[dispatcher_dep] = lambda: dispatcher
    suffix = uuid.uuid4().hex[:8]
    tenant, other = f"acme-{suffix}", f"globex-{suffix}"
    with get_sessionmaker(postgres_url)() as s:
        _, key = create_key(s, tenant)
        _, other_key = create_key(s, other)
    client = TestClient(app)
    return Env(
        settings=settings,
        app=app,
        client=client,
        dispatcher=dispatcher,
        url=postgres_url,
        tmp=tmp_path,
        tenant=tenant,
        other_tenant=other,
        key=key,
        other_key=other_key,
        headers={"Authorization": f"Bearer {key}"},
        other_headers={"Authorization": f"Bearer {other_key}"},
    )
