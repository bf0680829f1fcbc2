"""The API image holds no torch: the API, `layercut keys` and `layercut migrate` run with only the `api` extra's
packages. Checked here by running them in a process that cannot import any installed distribution the `api` extra
does not install (torch, numpy and every ML library among them), as in the image."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from layercut.testing import services

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
HEAVY = (
    "torch", "torchvision", "numpy", "PIL", "kneed", "skimage", "sklearn", "scipy", "torchmetrics", "matplotlib",
    "safetensors", "onnx", "onnxruntime", "onnxscript", "timm", "mlflow", "tqdm", "pandas",
)  # fmt: skip

BLOCKER = """
import importlib.abc, json, os, sys
BLOCKED = set(json.loads(os.environ["API_IMAGE_BLOCKED"]))
class NotInTheApiImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the API image)", name=name)
sys.meta_path.insert(0, NotInTheApiImage())
"""

EXERCISE = """
import json, sys
from importlib import metadata
from fastapi.testclient import TestClient
from layercut.api.main import create_app
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.keys import create_key

settings = Settings()
with get_sessionmaker(settings.resolved_database_url)() as session:
    _, key = create_key(session, "image-test")
auth = {"Authorization": f"Bearer {key}"}
with TestClient(create_app(settings)) as client:
    seen = {path: client.get(path).status_code for path in ("/readyz", "/metrics", "/docs", "/ui", "/openapi.json")}
    dataset = client.post("/v1/datasets", json={"kind": "builtin", "builtin": "digits"}, headers=auth).json()["id"]
    body = {"data": {"dataset_id": dataset, "image_size": 32}, "arch": "smallcnn", "train": {"epochs": 1}}
    pipeline = client.post("/v1/pipelines", json=body, headers=auth)
    seen["pipeline"] = pipeline.status_code
    seen["report"] = client.get(f"/v1/pipelines/{pipeline.json()['id']}/report", headers=auth).status_code
    seen["cancel"] = client.post(f"/v1/pipelines/{pipeline.json()['id']}/cancel", headers=auth).status_code
print(json.dumps(seen))
"""


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` install, with everything they require in turn (markers evaluated)."""
    found: set[str] = set()
    pending = [(Requirement(line), frozenset()) for line in requirements]
    while pending:
        requirement, extras = pending.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""})
        ):
            continue
        name = normalized(requirement.name)
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        pending += [(Requirement(line), frozenset(requirement.extras)) for line in requires]
    return found


def outside_the_image() -> set[str]:
    """Top-level modules of the installed distributions the `api` extra does not install: what an API container
    cannot import (optional imports of them fail there as they fail here)."""
    allowed = installed_closure(PROJECT["optional-dependencies"]["api"]) | {"layercut"}
    return {
        module
        for module, dists in metadata.packages_distributions().items()
        if module not in sys.stdlib_module_names and not any(normalized(d) in allowed for d in dists)
    }


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_api_extra_is_a_part_of_the_dependencies() -> None:
    """Declared once: every line of the `api` extra is the same line in `dependencies`, and no ML library is in it."""
    api = PROJECT["optional-dependencies"]["api"]
    assert set(api) <= set(PROJECT["dependencies"])
    assert not {normalized(Requirement(line).name) for line in api} & {"torch", "torchvision", "numpy", "timm"}


def test_the_api_keys_and_migrations_run_without_torch(tmp_path, redis_url) -> None:
    blocked = outside_the_image()
    assert set(HEAVY) <= blocked  # what the API image is about
    database = services.create_database()
    try:
        env = {
            "API_IMAGE_BLOCKED": json.dumps(sorted(blocked)),
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "LAYERCUT_DATABASE_URL": database,
            "LAYERCUT_BROKER_URL": f"{redis_url.rstrip('/')}/13",
            "LAYERCUT_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
            "LAYERCUT_ALLOW_INSECURE_DEFAULTS": "1",
            "LAYERCUT_DATA_DIR": str(tmp_path / "data"),
        }
        migrated = run("from layercut.cli.main import main; sys.argv = ['layercut', 'migrate']; main()", env)
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        keys = run(
            f"from layercut.cli.main import main; sys.argv = ['layercut', 'keys', 'create', '--tenant', '{tenant}']; main()",
            env,
        )
        assert keys.returncode == 0 and keys.stdout.strip().startswith("lc_"), keys.stderr[-3000:]

        exercised = run(EXERCISE, env)
        assert exercised.returncode == 0, exercised.stderr[-3000:]
        status = json.loads(exercised.stdout.strip().splitlines()[-1])
        assert status == {
            "/readyz": 200, "/metrics": 200, "/docs": 200, "/ui": 200, "/openapi.json": 200,
            "pipeline": 201, "report": 200, "cancel": 200,
        }  # fmt: skip
    finally:
        services.drop_database(database)
