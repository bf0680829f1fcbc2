"""Jobs: submit and dispatch, field-named 422s, references per tenant, get/list/filters/pagination, cancel,
idempotency (sequential and concurrent)."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from layercut.api.schemas.jobs import JobMetrics
from layercut.store.models import Job


def train(dataset_id: str, **extra) -> dict:
    return {
        "params": {
            "kind": "train",
            "data": {"dataset_id": dataset_id, "image_size": 32},
            "arch": "smallcnn",
            "train": {"epochs": 1},
            **extra,
        }
    }


def loc(response) -> list:
    return response.json()["detail"][0]["loc"]


def test_submit_commits_then_dispatches(env):
    dataset_id = env.dataset()
    response = env.client.post(
        "/v1/jobs", json={**train(dataset_id), "callback_url": "https://example.com/hook"}, headers=env.headers
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["kind"] == "train" and job["percent"] == 0
    assert job["params"]["data"]["dataset_id"] == dataset_id and job["callback_url"] == "https://example.com/hook"
    assert env.dispatcher.sent == [(uuid.UUID(job["id"]), "train")]
    with env.session() as s:
        assert s.get(Job, uuid.UUID(job["id"])).tenant == env.tenant


def test_a_failed_send_still_answers_201_and_leaves_the_job_queued(env):
    env.dispatcher.fail = True
    response = env.client.post("/v1/jobs", json=train(env.dataset()), headers=env.headers)
    assert response.status_code == 201
    assert env.client.get(f"/v1/jobs/{response.json()['id']}", headers=env.headers).json()["status"] == "queued"


def test_every_kind_is_accepted(env):
    dataset_id, model_id = env.dataset(), env.model()
    trained = env.client.post("/v1/jobs", json=train(dataset_id), headers=env.headers).json()["id"]
    analyzed = env.client.post(
        "/v1/jobs", json={"params": {"kind": "analyze", "model": {"from_job": trained}}}, headers=env.headers
    ).json()["id"]
    bodies = [
        {"kind": "truncate", "model": {"model_id": model_id}, "analysis_job": analyzed},
        {"kind": "truncate", "model": {"model_id": model_id}, "truncate": {"cut": "3"}},
        {"kind": "retrain", "model": {"model_id": model_id}, "dataset_id": dataset_id},
        {"kind": "compare", "base": {"model_id": model_id}, "slim": {"from_job": trained}},
        {"kind": "explain", "model": {"model_id": model_id}},
        {
            "kind": "explain",
            "model": {"from_job": trained},
            "compare_with": {"model_id": model_id},
            "explain": {"methods": ["gradcam", "saliency"], "images": 4, "target": 1},
        },
    ]
    for params in bodies:
        response = env.client.post("/v1/jobs", json={"params": params}, headers=env.headers)
        assert response.status_code == 201, (params, response.text)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"kind": "train", "data": {"dataset_id": "DS"}, "arch": "alexnet9000"}, ["body", "params", "train", "arch"]),
        (
            {"kind": "train", "data": {"dataset_id": "DS", "image_size": 8}},
            ["body", "params", "train", "data", "image_size"],
        ),
        (
            {"kind": "train", "data": {"dataset_id": "DS"}, "train": {"epochs": 0}},
            ["body", "params", "train", "train", "epochs"],
        ),
        ({"kind": "train"}, ["body", "params", "train", "data"]),
        ({"kind": "slim"}, ["body", "params"]),
        ({"kind": "train", "data": {"dataset_id": str(uuid.UUID(int=7))}}, ["body", "params", "data", "dataset_id"]),
        ({"kind": "train", "data": {"dataset_id": "FOREIGN"}}, ["body", "params", "data", "dataset_id"]),
        ({"kind": "analyze", "model": {"model_id": "FOREIGN_MODEL"}}, ["body", "params", "model", "model_id"]),
        ({"kind": "analyze", "model": {"from_job": str(uuid.UUID(int=9))}}, ["body", "params", "model", "from_job"]),
        ({"kind": "analyze", "model": {}}, ["body", "params", "analyze", "model"]),
        (
            {"kind": "compare", "base": {"model_id": "MODEL"}, "slim": {"model_id": "FOREIGN_MODEL"}},
            ["body", "params", "slim", "model_id"],
        ),
        ({"kind": "truncate", "model": {"model_id": "MODEL"}}, ["body", "params", "analysis_job"]),
        (
            {"kind": "explain", "model": {"model_id": "MODEL"}, "compare_with": {"model_id": "FOREIGN_MODEL"}},
            ["body", "params", "compare_with", "model_id"],
        ),
        (
            {"kind": "explain", "model": {"model_id": "MODEL"}, "explain": {"methods": ["xray"]}},
            ["body", "params", "explain", "explain", "methods", 0],
        ),
        (
            {"kind": "retrain", "model": {"model_id": "MODEL"}, "dataset_id": "FOREIGN"},
            ["body", "params", "dataset_id"],
        ),
    ],
)
def test_malformed_bodies_name_the_field(env, params, field):
    mine, foreign = env.dataset(), env.dataset(env.other_headers)
    model, foreign_model = env.model(), env.model(env.other_tenant)
    text = (
        str(params)
        .replace("FOREIGN_MODEL", foreign_model)
        .replace("FOREIGN", foreign)
        .replace("MODEL", model)
        .replace("'DS'", repr(mine))
    )
    response = env.client.post("/v1/jobs", json={"params": eval(text)}, headers=env.headers)  # noqa: S307 - test data
    assert response.status_code == 422, response.text
    assert loc(response)[: len(field)] == field, response.json()
    assert env.dispatcher.sent == []


def test_extra_fields_and_bad_callback_are_422(env):
    body = train(env.dataset())
    assert env.client.post("/v1/jobs", json={**body, "priority": 1}, headers=env.headers).status_code == 422
    response = env.client.post("/v1/jobs", json={**body, "callback_url": "ftp://x"}, headers=env.headers)
    assert response.status_code == 422 and loc(response) == ["body", "callback_url"]


def test_get_shows_progress_error_metrics_and_artifacts(env):
    job_id = env.finished_job(artifacts={"metrics.json": (b"{}", "application/json")})
    body = env.client.get(f"/v1/jobs/{job_id}", headers=env.headers).json()
    assert body["status"] == "succeeded" and body["percent"] == 100
    assert body["metrics"] == {**dict.fromkeys(JobMetrics.model_fields), "params": 2_750, "params_kept": 0.25}
    assert body["artifacts"][0]["name"] == "metrics.json"
    assert body["artifacts"][0]["download_url"].endswith(f"/v1/artifacts/{body['artifacts'][0]['id']}")
    failed = env.finished_job(status="failed")
    with env.session() as s:
        job = s.get(Job, uuid.UUID(failed))
        job.error_code, job.error_message = "bad_data", "class 'x' has no images"
        s.commit()
    assert env.client.get(f"/v1/jobs/{failed}", headers=env.headers).json()["error"] == {
        "code": "bad_data",
        "message": "class 'x' has no images",
    }


def test_tenant_isolation(env):
    job_id = env.client.post("/v1/jobs", json=train(env.dataset()), headers=env.headers).json()["id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/artifacts"),
    ):
        assert env.client.request(method, path, headers=env.other_headers).status_code == 404
    assert env.client.get("/v1/jobs", headers=env.other_headers).json() == {"items": [], "next_cursor": None}
    assert env.client.get(f"/v1/jobs/{uuid.uuid4()}", headers=env.headers).status_code == 404


def test_cursor_pagination_walks_every_job_once_with_filters(env):
    dataset_id = env.dataset()
    made = [env.client.post("/v1/jobs", json=train(dataset_id), headers=env.headers).json()["id"] for _ in range(7)]
    done = env.finished_job()
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, "kind": "train", "status": "queued", **({"cursor": cursor} if cursor else {})}
        response = env.client.get("/v1/jobs", params=params, headers=env.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(made)) and pages == 3
    everything = env.client.get("/v1/jobs", params={"limit": 200}, headers=env.headers).json()["items"]
    assert {j["id"] for j in everything} == set(made) | {done}
    assert [
        j["id"] for j in env.client.get("/v1/jobs", params={"status": "succeeded"}, headers=env.headers).json()["items"]
    ] == [done]
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert env.client.get("/v1/jobs", params={"created_after": future}, headers=env.headers).json()["items"] == []
    assert len(env.client.get("/v1/jobs", params={"created_before": future}, headers=env.headers).json()["items"]) == 8
    assert env.client.get("/v1/jobs", params={"limit": 201}, headers=env.headers).status_code == 422
    bad = env.client.get("/v1/jobs", params={"cursor": "garbage!"}, headers=env.headers)
    assert bad.status_code == 422 and loc(bad) == ["query", "cursor"]


def test_cancel_semantics(env):
    job_id = env.client.post("/v1/jobs", json=train(env.dataset()), headers=env.headers).json()["id"]
    response = env.client.post(f"/v1/jobs/{job_id}/cancel", headers=env.headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert env.client.post(f"/v1/jobs/{job_id}/cancel", headers=env.headers).status_code == 409
    finished = env.finished_job()
    assert env.client.post(f"/v1/jobs/{finished}/cancel", headers=env.headers).status_code == 409
    running = env.client.post("/v1/jobs", json=train(env.dataset()), headers=env.headers).json()["id"]
    with env.session() as s:
        s.get(Job, uuid.UUID(running)).status = "running"
        s.commit()
    body = env.client.post(f"/v1/jobs/{running}/cancel", headers=env.headers).json()
    assert body["status"] == "cancelling" and body["cancel_requested"] is True


def test_idempotency_same_body_same_job_other_body_422(env):
    body = train(env.dataset())
    headers = {**env.headers, "Idempotency-Key": "submit-1"}
    first = env.client.post("/v1/jobs", json=body, headers=headers)
    again = env.client.post("/v1/jobs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert len(env.dispatcher.sent) == 1
    other = env.client.post("/v1/jobs", json=train(env.dataset()), headers=headers)
    assert other.status_code == 422 and loc(other) == ["header", "Idempotency-Key"]
    too_long = env.client.post("/v1/jobs", json=body, headers={**env.headers, "Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422 and loc(too_long) == ["header", "Idempotency-Key"]


def test_concurrent_duplicates_make_one_row(env):
    body = train(env.dataset())
    headers = {**env.headers, "Idempotency-Key": "race"}
    results: list = []
    barrier = threading.Barrier(8)

    def submit():
        barrier.wait()
        results.append(env.client.post("/v1/jobs", json=body, headers=headers))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in results}) == 1
    with env.session() as s:
        assert (
            s.scalar(
                select(func.count()).select_from(Job).where(Job.tenant == env.tenant, Job.idempotency_key == "race")
            )
            == 1
        )
    assert len(env.dispatcher.sent) == 1


def walk(env, path: str, **params) -> list[str]:
    """Every id of a list, page by page (3 a page), following next_cursor."""
    seen, cursor = [], None
    while True:
        page = env.client.get(
            path, params={"limit": 3, **params, **({"cursor": cursor} if cursor else {})}, headers=env.headers
        )
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if not cursor:
            return seen


def test_labels_find_jobs_and_pipelines_and_every_list_sorts_both_ways(env):
    """Labels given at creation come back and filter lists (every label given must match); a pipeline's steps
    carry its labels; every list walks oldest first with sort=created_at, and a cursor keeps its order."""
    dataset_id = env.dataset()
    tagged = [
        env.client.post(
            "/v1/jobs", json={**train(dataset_id), "labels": {"team": "vision", "run": str(i)}}, headers=env.headers
        ).json()
        for i in range(4)
    ]
    plain = env.client.post("/v1/jobs", json=train(dataset_id), headers=env.headers).json()
    assert tagged[0]["labels"] == {"team": "vision", "run": "0"} and plain["labels"] == {}
    ids = [job["id"] for job in tagged]
    assert walk(env, "/v1/jobs", label="team=vision") == list(reversed(ids))
    assert walk(env, "/v1/jobs", label=["team=vision", "run=2"]) == [ids[2]]
    assert walk(env, "/v1/jobs", label="team=audio") == []
    assert walk(env, "/v1/jobs", sort="created_at") == [*ids, plain["id"]]
    assert walk(env, "/v1/jobs", sort="created_at", label="team=vision") == ids
    first = env.client.get("/v1/jobs", params={"limit": 2, "sort": "created_at"}, headers=env.headers).json()
    mixed = env.client.get("/v1/jobs", params={"cursor": first["next_cursor"]}, headers=env.headers)
    assert mixed.status_code == 422 and "sort=created_at" in mixed.text
    for bad in ("team", "=vision", "bad key=1"):
        answer = env.client.get("/v1/jobs", params={"label": bad}, headers=env.headers)
        assert answer.status_code == 422 and loc(answer) == ["query", "label"], bad
    too_many = {f"k{i}": "v" for i in range(21)}
    answer = env.client.post("/v1/jobs", json={**train(dataset_id), "labels": too_many}, headers=env.headers)
    assert answer.status_code == 422 and loc(answer)[:2] == ["body", "labels"]
    answer = env.client.post("/v1/jobs", json={**train(dataset_id), "labels": {"bad key": "x"}}, headers=env.headers)
    assert answer.status_code == 422

    pipeline = env.client.post(
        "/v1/pipelines",
        json={"data": {"dataset_id": dataset_id, "image_size": 32}, "arch": "smallcnn", "labels": {"team": "vision"}},
        headers=env.headers,
    ).json()
    assert pipeline["labels"] == {"team": "vision"}
    assert walk(env, "/v1/pipelines", label="team=vision") == [pipeline["id"]]
    steps = {step["id"] for step in pipeline["steps"]}
    assert set(walk(env, "/v1/jobs", label="team=vision", pipeline_id=pipeline["id"])) == steps
    for path in ("/v1/datasets", "/v1/models", "/v1/pipelines"):
        newest = walk(env, path)
        assert walk(env, path, sort="created_at") == list(reversed(newest)), path


def test_cancelling_a_queued_job_or_pipeline_sends_their_callbacks(env):
    """Nothing runs a job cancelled while queued, so the API tells its callback (and its pipeline's) itself."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from layercut.testing.workers import wait_for

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        model = env.model()
        job = env.client.post(
            "/v1/jobs",
            json={"params": {"kind": "analyze", "model": {"model_id": model}}, "callback_url": hook},
            headers=env.headers,
        ).json()
        pipeline = env.client.post(
            "/v1/pipelines", json={"model_id": model, "callback_url": hook}, headers=env.headers
        ).json()
        assert env.client.post(f"/v1/jobs/{job['id']}/cancel", headers=env.headers).json()["status"] == "cancelled"
        assert env.client.post(f"/v1/pipelines/{pipeline['id']}/cancel", headers=env.headers).status_code == 200
        wait_for(lambda: len(received) >= 2, 15, 0.05, what="the two callbacks")
    finally:
        server.shutdown()
        server.server_close()
    by_id = {r["id"]: r for r in received}
    assert by_id[job["id"]]["status"] == "cancelled" and by_id[pipeline["id"]]["status"] == "cancelled"
    assert by_id[pipeline["id"]]["type"] == "pipeline"
