"""`layercut serve` in its embedded default, end to end through layercut.client.

A subprocess on a free port with a fresh LAYERCUT_DATA_DIR and no database or broker configured: it
migrates its SQLite file, serves, and runs jobs in-process. A key made with `layercut keys create`
registers the builtin textures set, trains a tiny model, and one artifact is downloaded and verified.
"""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from layercut.client import ApiError, JobFailed, LayercutClient
from layercut.testing.commands import layercut, serving_embedded


@pytest.fixture
def embedded_server(tmp_path):
    with serving_embedded(tmp_path) as server:
        yield server


def test_serve_says_what_embedded_mode_is_and_migrates(embedded_server):
    base, env, tmp_path = embedded_server
    text = (tmp_path / "serve.log").read_text()
    assert "mode: embedded" in text and "one job at a time" in text and "no separate workers" in text
    assert (tmp_path / "data" / "layercut.db").is_file()
    ready = httpx.get(f"{base}/readyz", timeout=5).json()
    assert ready["checks"]["database"] == "ok"
    assert httpx.get(f"{base}/v1/jobs", timeout=5).status_code == 401  # /v1 needs a key


def test_embedded_end_to_end_train_and_verified_download(embedded_server):
    base, env, tmp_path = embedded_server
    key = json.loads(layercut("keys", "create", "--tenant", "e2e", "--json", env=env, cwd=tmp_path).stdout)["key"]
    with LayercutClient(base, key, timeout=30) as lc:
        dataset = lc.register_dataset(name="textures", builtin="textures")
        assert set(dataset["classes"]) >= {"brick", "grass", "gravel"}
        again = lc.register_dataset(name="textures", builtin="textures", idempotency_key="same")
        assert lc.register_dataset(name="textures", builtin="textures", idempotency_key="same")["id"] == again["id"]

        params = {
            "kind": "train",
            "data": {"dataset_id": dataset["id"], "image_size": 32},
            "arch": "smallcnn",
            "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
        }
        job = lc.submit_job(params, idempotency_key="train-1")
        assert lc.submit_job(params, idempotency_key="train-1")["id"] == job["id"]  # a retried POST is the same job
        with pytest.raises(ApiError) as info:
            lc.submit_job({**params, "arch": "no-such-net"})
        assert info.value.status_code == 422 and "arch" in str(info.value)

        try:
            done = lc.wait(job["id"], timeout=300, poll=0.2, poll_cap=2.0)
        except JobFailed as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'serve.log').read_text()[-4000:]}") from exc
        assert done["status"] == "succeeded" and done["started_at"] and done["finished_at"]

        artifacts = lc.list_artifacts(job["id"])
        assert artifacts, "a train job writes files"
        checkpoint = next(a for a in artifacts if a["kind"] == "checkpoint")
        folder = tmp_path / "downloads"
        folder.mkdir()
        path = lc.download_artifact(checkpoint, folder)  # an existing folder: the artifact's own name
        assert path.parent == folder and path.name == checkpoint["name"] and path.stat().st_size == checkpoint["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == checkpoint["sha256"]
        metrics = next(a for a in artifacts if a["name"].endswith(".json"))
        assert json.loads(lc.download_artifact(metrics, tmp_path / "m.json").read_text())
