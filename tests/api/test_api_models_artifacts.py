"""Models (list/get/download/import round-trip) and artifacts (list/download, content type, isolation, no paths
from the request)."""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import numpy as np
import torch
from safetensors.numpy import save

from layercut.jobs.runner import execute_job
from layercut.stages.architectures import build_model
from layercut.stages.checkpoint import load_checkpoint
from layercut.store.models import Artifact
from layercut.testing.nets import random_images, seeded

SPEC = {"architecture": "smallcnn", "classes": ["cat", "dog"], "image_size": 32, "mean": [0.5], "std": [0.25]}


def trained_elsewhere(classes: int = 2) -> torch.nn.Module:
    return seeded(build_model("smallcnn", classes), seed=3).eval()


def state_dict_file(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": 5, "state_dict": model.state_dict()}, buffer)
    return buffer.getvalue()


def post_import(env, data: bytes, spec: dict | str = SPEC, name: str = "resnet.pt", headers: dict | None = None):
    return env.client.post(
        "/v1/models/import",
        files={"weights": (name, data)},
        data={"spec": spec if isinstance(spec, str) else json.dumps(spec)},
        headers=headers or env.headers,
    )


def upload_folder(env, job_id: str):
    return env.settings.resolved_artifact_root / env.tenant / "imports" / job_id


def test_import_a_torch_state_dict_round_trip(env, tmp_path):
    original = trained_elsewhere()
    response = post_import(env, state_dict_file(original))
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["kind"], job["status"]) == ("import", "queued")
    assert response.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    assert env.dispatcher.sent == [(uuid.UUID(job["id"]), "import")]
    assert upload_folder(env, job["id"]).is_dir()

    assert execute_job(job["id"], env.settings) == "succeeded"
    done = env.client.get(f"/v1/jobs/{job['id']}", headers=env.headers).json()
    parameters = sum(p.numel() for p in original.parameters())
    assert done["result"]["params"] == parameters and done["result"]["found_under"] == "state_dict"
    assert not upload_folder(env, job["id"]).exists()  # the upload is gone once imported
    model = env.client.get(f"/v1/models/{done['result']['model_id']}", headers=env.headers).json()
    assert (model["source"], model["trained"], model["params"]) == ("import", True, parameters)
    assert model["classes"] == ["cat", "dog"] and model["job_id"] == job["id"]

    download = env.client.get(f"/v1/models/{model['id']}/checkpoint", headers=env.headers)
    assert download.status_code == 200 and download.headers["content-type"] == "application/octet-stream"
    (tmp_path / "got.safetensors").write_bytes(download.content)
    imported, spec = load_checkpoint(tmp_path / "got.safetensors")
    assert spec.architecture == "smallcnn" and spec.classes == ["cat", "dog"]
    images = random_images(3, 3, 32)
    with torch.no_grad():
        assert torch.equal(imported(images), original(images))
    # another tenant sees nothing
    assert env.client.get(f"/v1/models/{model['id']}", headers=env.other_headers).status_code == 404
    assert env.client.get(f"/v1/jobs/{job['id']}", headers=env.other_headers).status_code == 404
    assert env.client.get("/v1/models", headers=env.other_headers).json()["items"] == []
    # the imported model can be used by a job, by id or as the import job's output
    for ref in ({"model_id": model["id"]}, {"from_job": job["id"]}):
        used = env.client.post("/v1/jobs", json={"params": {"kind": "analyze", "model": ref}}, headers=env.headers)
        assert used.status_code == 201, used.text
        assert env.client.post(f"/v1/jobs/{used.json()['id']}/cancel", headers=env.headers).status_code == 200
    # deleting the model deletes the import job that made it
    assert env.client.delete(f"/v1/models/{model['id']}", headers=env.headers).status_code == 204
    assert env.client.get(f"/v1/jobs/{job['id']}", headers=env.headers).status_code == 404


def test_an_export_job_makes_a_deployable_file_as_its_artifact(env):
    """Import a model, export it as ONNX through a job, download the file and run it in ONNX Runtime alone."""
    import onnxruntime

    original = trained_elsewhere()
    imported = post_import(env, state_dict_file(original)).json()
    assert execute_job(imported["id"], env.settings) == "succeeded"
    params = {"kind": "export", "model": {"from_job": imported["id"]}, "export": {"latency_repeats": 2}}
    job = env.client.post("/v1/jobs", json={"params": params}, headers=env.headers)
    assert job.status_code == 201, job.text
    assert execute_job(job.json()["id"], env.settings) == "succeeded"
    done = env.client.get(f"/v1/jobs/{job.json()['id']}", headers=env.headers).json()
    assert done["result"]["parity"]["max_abs_diff"] <= 1e-4 and done["result"]["format"] == "onnx"
    files = {a["name"]: a for a in done["artifacts"]}
    assert set(files) == {"model.onnx", "export.json"}
    onnx_bytes = env.client.get(files["model.onnx"]["download_url"], headers=env.headers).content
    assert hashlib.sha256(onnx_bytes).hexdigest() == files["model.onnx"]["sha256"]
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    images = random_images(3, 3, 32)
    (logits,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        assert np.abs(logits - original(images).numpy()).max() <= 1e-4


def test_an_import_whose_weights_do_not_fit_fails_naming_why(env):
    response = post_import(env, state_dict_file(trained_elsewhere(classes=3)))
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert execute_job(job_id, env.settings) == "failed"
    failed = env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).json()
    assert "(classifier.weight) has 3 outputs but 2 classes were given" in failed["error"]["message"]
    assert env.client.get("/v1/models", headers=env.headers).json()["items"] == []
    assert not upload_folder(env, job_id).exists()

    wrong_arch = post_import(env, state_dict_file(trained_elsewhere()), {**SPEC, "architecture": "vgg11"})
    assert execute_job(wrong_arch.json()["id"], env.settings) == "failed"
    message = env.client.get(f"/v1/jobs/{wrong_arch.json()['id']}", headers=env.headers).json()["error"]["message"]
    assert "do not fit vgg11 with 2 classes: missing keys: features.0.bias" in message and "in all" in message


def test_import_rejects_bad_spec_and_files_that_are_not_weights(env):
    bad_arch = post_import(env, state_dict_file(trained_elsewhere()), {**SPEC, "architecture": "alexnet9000"})
    assert bad_arch.status_code == 422 and bad_arch.json()["detail"][0]["loc"] == ["body", "spec", "architecture"]
    assert post_import(env, b"x", "not json").json()["detail"][0]["loc"] == ["body", "spec"]
    good = safetensors_weights()
    for broken in (
        b"short",
        b"just some text that is long enough",
        good[:-4],
        (10**9).to_bytes(8, "little") + good[8:],
        good[:8] + b"[" + good[9:],
        good + b"extra",
    ):
        response = post_import(env, broken, name="m.safetensors")
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "weights"]
        assert "torch.save" in response.json()["detail"][0]["msg"]
    assert env.dispatcher.sent == []
    incoming = env.settings.resolved_artifact_root / env.tenant / "imports" / ".incoming"
    assert not any(incoming.iterdir())  # nothing left behind


def test_import_is_not_a_kind_of_v1_jobs(env):
    params = {
        "kind": "import",
        "spec": SPEC,
        "weights_name": "w.pt",
        "weights_sha256": "0" * 64,
        "weights_bytes": 1,
    }
    response = env.client.post("/v1/jobs", json={"params": params}, headers=env.headers)
    assert response.status_code == 422 and "POST /v1/models/import" in response.text


def safetensors_weights() -> bytes:
    return save({"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "fc.bias": np.ones(2, np.float32)})


def test_import_idempotency(env):
    headers = {**env.headers, "Idempotency-Key": "import-1"}
    data = state_dict_file(trained_elsewhere())
    first = post_import(env, data, headers=headers)
    again = post_import(env, data, headers=headers)
    other = post_import(env, data, {**SPEC, "image_size": 64}, headers=headers)
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 422)
    assert first.json()["id"] == again.json()["id"]
    assert len(env.dispatcher.sent) == 1
    assert [p.name for p in upload_folder(env, first.json()["id"]).iterdir()] == ["weights.pt"]
    incoming = env.settings.resolved_artifact_root / env.tenant / "imports" / ".incoming"
    assert not any(incoming.iterdir())


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
