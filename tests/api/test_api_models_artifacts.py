"""Models (list/get/download/import round-trip) and artifacts (list/download, content type, isolation, no paths
from the request)."""

from __future__ import annotations

import hashlib
import json
import uuid

import numpy as np
from safetensors.numpy import load, save

from layercut.store.models import Artifact

SPEC = {"architecture": "smallcnn", "classes": ["cat", "dog"], "image_size": 32, "mean": [0.5], "std": [0.25]}


def weights() -> bytes:
    return save(
        {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "fc.bias": np.ones(2, np.float32)},
        metadata={"origin": "elsewhere"},
    )


def header(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])


def test_import_round_trip(env):
    response = env.client.post(
        "/v1/models/import",
        files={"weights": ("m.safetensors", weights())},
        data={"spec": json.dumps(SPEC)},
        headers=env.headers,
    )
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["source"] == "import" and model["trained"] is True and model["params"] == 26
    assert model["classes"] == ["cat", "dog"] and model["architecture"] == "smallcnn"
    download = env.client.get(f"/v1/models/{model['id']}/checkpoint", headers=env.headers)
    assert download.status_code == 200 and download.headers["content-type"] == "application/octet-stream"
    meta = header(download.content)["__metadata__"]
    spec = json.loads(meta["layercut.spec"])
    assert spec["architecture"] == "smallcnn" and spec["classes"] == ["cat", "dog"] and meta["origin"] == "elsewhere"
    tensors = load(download.content)  # still a valid safetensors file, tensors intact
    assert tensors["conv.weight"].tolist() == np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2).tolist()
    assert env.client.get(f"/v1/models/{model['id']}", headers=env.headers).json()["id"] == model["id"]
    assert model["id"] in [m["id"] for m in env.client.get("/v1/models", headers=env.headers).json()["items"]]
    # another tenant sees nothing
    assert env.client.get(f"/v1/models/{model['id']}", headers=env.other_headers).status_code == 404
    assert env.client.get(f"/v1/models/{model['id']}/checkpoint", headers=env.other_headers).status_code == 404
    assert env.client.get("/v1/models", headers=env.other_headers).json()["items"] == []
    # and the imported model can be used by a job
    job = env.client.post(
        "/v1/jobs", json={"params": {"kind": "analyze", "model": {"model_id": model["id"]}}}, headers=env.headers
    )
    assert job.status_code == 201


def test_import_rejects_bad_spec_and_bad_weights(env):
    def post(spec, data):
        return env.client.post(
            "/v1/models/import", files={"weights": ("m.safetensors", data)}, data={"spec": spec}, headers=env.headers
        )

    bad_arch = post(json.dumps({**SPEC, "architecture": "alexnet9000"}), weights())
    assert bad_arch.status_code == 422 and bad_arch.json()["detail"][0]["loc"] == ["body", "spec", "architecture"]
    assert post("not json", weights()).json()["detail"][0]["loc"] == ["body", "spec"]
    good = weights()
    n = int.from_bytes(good[:8], "little")
    for broken in (
        b"short",
        good[:-4],
        (10**9).to_bytes(8, "little") + good[8:],
        good[:8] + b"[" + good[9:],
        good + b"extra",
    ):
        response = post(json.dumps(SPEC), broken)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "weights"]
    assert n > 0


def test_import_idempotency(env):
    headers = {**env.headers, "Idempotency-Key": "import-1"}
    files = {"weights": ("m.safetensors", weights())}
    first = env.client.post("/v1/models/import", files=files, data={"spec": json.dumps(SPEC)}, headers=headers)
    again = env.client.post("/v1/models/import", files=files, data={"spec": json.dumps(SPEC)}, headers=headers)
    other = env.client.post(
        "/v1/models/import", files=files, data={"spec": json.dumps({**SPEC, "image_size": 64})}, headers=headers
    )
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 422)
    assert first.json()["id"] == again.json()["id"]
    assert env.client.get(f"/v1/models/{first.json()['id']}", headers=env.headers).json()["image_size"] == 32


def test_model_pagination(env):
    made = [env.model() for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = env.client.get(
            "/v1/models", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=env.headers
        ).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(made))


def test_artifacts_listed_and_downloaded_with_their_content_type(env):
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 20
    job_id = env.finished_job(
        artifacts={"curve.png": (png, "image/png"), "metrics.json": (b'{"a": 1}', "application/json")}
    )
    listed = env.client.get(f"/v1/jobs/{job_id}/artifacts", headers=env.headers).json()
    assert sorted(a["name"] for a in listed) == ["curve.png", "metrics.json"]
    for artifact in listed:
        response = env.client.get(f"/v1/artifacts/{artifact['id']}", headers=env.headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(artifact["content_type"])
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"]
        assert env.client.get(f"/v1/artifacts/{artifact['id']}", headers=env.other_headers).status_code == 404
    assert env.client.get(f"/v1/jobs/{job_id}/artifacts", headers=env.other_headers).status_code == 404
    assert env.client.get(f"/v1/artifacts/{uuid.uuid4()}", headers=env.headers).status_code == 404


def test_an_artifact_row_pointing_outside_the_root_is_not_served(env):
    secret = env.tmp / "secret.txt"
    secret.write_text("top secret")
    job_id = env.finished_job()
    with env.session() as s:
        row = Artifact(
            tenant=env.tenant,
            job_id=uuid.UUID(job_id),
            path="../secret.txt",
            kind="other",
            bytes=10,
            sha256="0" * 64,
            content_type="text/plain",
        )
        s.add(row)
        s.commit()
        artifact_id = row.id
    response = env.client.get(f"/v1/artifacts/{artifact_id}", headers=env.headers)
    assert response.status_code == 404 and "top secret" not in response.text
