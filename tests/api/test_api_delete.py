"""Deleting finished work through the API (jobs, pipelines, imported models, with their files) and the
retention setting that expires old finished work; nothing still read by an unfinished job is deleted."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update

from layercut import telemetry
from layercut.jobs.retention import expire
from layercut.store.models import Artifact, Job, Pipeline


def train(dataset_id: str, **params) -> dict:
    return {
        "params": {"kind": "train", "data": {"dataset_id": dataset_id, "image_size": 32}, "arch": "smallcnn", **params}
    }


def test_a_finished_job_is_deleted_with_its_files_and_log(env) -> None:
    job_id = env.finished_job(artifacts={"metrics.json": (b"{}", "application/json")})
    root = env.settings.resolved_artifact_root
    log = telemetry.job_log_path(root, env.tenant, job_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text('{"message": "job started"}\n')
    assert env.client.delete(f"/v1/jobs/{job_id}", headers=env.other_headers).status_code == 404
    assert env.client.delete(f"/v1/jobs/{job_id}", headers=env.headers).status_code == 204
    assert env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).status_code == 404
    assert not (root / env.tenant / job_id).exists() and not log.exists()
    with env.session() as s:
        assert s.scalars(select(Artifact).where(Artifact.job_id == uuid.UUID(job_id))).all() == []
    assert env.client.delete(f"/v1/jobs/{job_id}", headers=env.headers).status_code == 404


def test_unfinished_work_and_what_it_reads_are_kept(env) -> None:
    dataset_id = env.dataset()
    queued = env.client.post("/v1/jobs", json=train(dataset_id), headers=env.headers).json()["id"]
    answer = env.client.delete(f"/v1/jobs/{queued}", headers=env.headers)
    assert answer.status_code == 409 and "has not ended" in answer.json()["detail"]
    maker = env.finished_job()
    model_id = env.model(made_by=maker)
    reader = env.client.post(
        "/v1/jobs", json={"params": {"kind": "analyze", "model": {"model_id": model_id}}}, headers=env.headers
    )
    assert reader.status_code == 201, reader.text
    answer = env.client.delete(f"/v1/jobs/{maker}", headers=env.headers)
    assert answer.status_code == 409 and reader.json()["id"] in answer.json()["detail"]
    answer = env.client.delete(f"/v1/models/{model_id}", headers=env.headers)
    assert answer.status_code == 409 and maker in answer.json()["detail"]  # a job's model goes with its job
    env.client.post(f"/v1/jobs/{reader.json()['id']}/cancel", headers=env.headers)
    assert env.client.delete(f"/v1/jobs/{maker}", headers=env.headers).status_code == 204
    assert env.client.get(f"/v1/models/{model_id}", headers=env.headers).status_code == 404


def test_an_imported_model_is_deleted_with_its_checkpoint(env) -> None:
    model_id = env.model()
    folder = env.settings.resolved_artifact_root / env.tenant / "models" / model_id
    assert folder.is_dir()
    assert env.client.delete(f"/v1/models/{model_id}", headers=env.other_headers).status_code == 404
    assert env.client.delete(f"/v1/models/{model_id}", headers=env.headers).status_code == 204
    assert not folder.exists() and env.client.get(f"/v1/models/{model_id}", headers=env.headers).status_code == 404


def test_a_pipeline_is_deleted_once_every_step_ended(env) -> None:
    body = {"data": {"dataset_id": env.dataset(), "image_size": 32}, "arch": "smallcnn"}
    pipeline = env.client.post("/v1/pipelines", json=body, headers=env.headers).json()
    step = pipeline["steps"][0]["id"]
    assert env.client.delete(f"/v1/jobs/{step}", headers=env.headers).status_code == 409  # a step: delete the pipeline
    assert env.client.delete(f"/v1/pipelines/{pipeline['id']}", headers=env.headers).status_code == 409
    assert env.client.post(f"/v1/pipelines/{pipeline['id']}/cancel", headers=env.headers).status_code == 200
    assert env.client.delete(f"/v1/pipelines/{pipeline['id']}", headers=env.headers).status_code == 204
    assert env.client.get(f"/v1/pipelines/{pipeline['id']}", headers=env.headers).status_code == 404
    assert env.client.get(f"/v1/jobs/{step}", headers=env.headers).status_code == 404


def test_retention_expires_old_finished_work_only(env) -> None:
    now = datetime.now(timezone.utc)
    old, recent = env.finished_job(), env.finished_job()
    body = {"data": {"dataset_id": env.dataset(), "image_size": 32}, "arch": "smallcnn"}
    pipeline = env.client.post("/v1/pipelines", json=body, headers=env.headers).json()["id"]
    env.client.post(f"/v1/pipelines/{pipeline}/cancel", headers=env.headers)
    with env.session() as s:
        s.execute(update(Job).where(Job.id == uuid.UUID(old)).values(finished_at=now - timedelta(days=10)))
        s.execute(update(Job).where(Job.id == uuid.UUID(recent)).values(finished_at=now - timedelta(hours=1)))
        s.execute(
            update(Pipeline).where(Pipeline.id == uuid.UUID(pipeline)).values(finished_at=now - timedelta(days=10))
        )
        s.commit()
    assert expire(env.settings.model_copy(update={"retention_days": 0})) == {"jobs": 0, "pipelines": 0}
    done = expire(env.settings.model_copy(update={"retention_days": 7}))
    assert done["jobs"] >= 1 and done["pipelines"] >= 1
    assert env.client.get(f"/v1/jobs/{old}", headers=env.headers).status_code == 404
    assert env.client.get(f"/v1/jobs/{recent}", headers=env.headers).status_code == 200
    assert env.client.get(f"/v1/pipelines/{pipeline}", headers=env.headers).status_code == 404
