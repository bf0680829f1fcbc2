"""Pipelines: linked steps, only the first dispatched, variants, isolation, pagination, cancel, idempotency."""

from __future__ import annotations

import uuid

from layercut.store.models import Job


def test_default_pipeline_cuts_by_the_accuracy_budget_in_one_select_step(env):
    dataset_id = env.dataset()
    body = {"data": {"dataset_id": dataset_id}, "arch": "smallcnn", "select": {"max_drop": 2.5, "max_retrains": 3}}
    response = env.client.post("/v1/pipelines", json=body, headers=env.headers)
    assert response.status_code == 201, response.text
    steps = response.json()["steps"]
    assert [s["kind"] for s in steps] == ["train", "analyze", "select", "compare", "explain"]
    ids = [uuid.UUID(s["id"]) for s in steps]
    with env.session() as s:
        train, analyze, select, compare, explain = (s.get(Job, i).params for i in ids)
    assert select["model"]["from_job"] == str(ids[0]) and select["analysis_job"] == str(ids[1])
    assert select["select"] == {"max_drop": 2.5, "min_accuracy": None, "max_retrains": 3}
    assert select["train"] == train["train"] and select["dataset_id"] == dataset_id
    assert compare["slim"]["from_job"] == str(ids[2]) and explain["compare_with"]["from_job"] == str(ids[2])
    swept = env.client.post(
        "/v1/pipelines", json={**body, "sweep": {"cuts": "every:2"}, "stop_after": "compare"}, headers=env.headers
    ).json()["steps"]
    assert [s["kind"] for s in swept] == ["train", "analyze", "sweep_plan", "select", "compare"]
    with env.session() as s:
        sweep = s.get(Job, uuid.UUID(swept[2]["id"])).params
    assert sweep["sweep"]["cuts"] == "every:2" and sweep["analysis_job"] == swept[1]["id"]


def test_a_bad_budget_or_sweep_is_refused_naming_the_field(env):
    dataset = {"dataset_id": env.dataset()}
    for body, loc in (
        ({"data": dataset, "select": {"min_accuracy": 0.95}}, ["body", "select", "min_accuracy"]),
        ({"data": dataset, "select": {"max_drop": -1}}, ["body", "select", "max_drop"]),
        ({"data": dataset, "select": {"max_retrains": 1000}}, ["body", "select", "max_retrains"]),
        ({"data": dataset, "sweep": {"cuts": "every:0"}}, ["body", "sweep", "cuts"]),
    ):
        response = env.client.post("/v1/pipelines", json=body, headers=env.headers)
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"] == loc
    job = {"params": {"kind": "truncate", "model": {"model_id": env.model()}, "truncate": {"cut": "auto"}}}
    response = env.client.post("/v1/jobs", json=job, headers=env.headers)
    assert response.status_code == 422 and "select job" in response.text


def test_full_pipeline_makes_linked_jobs_and_dispatches_only_the_first(env):
    dataset_id = env.dataset()
    response = env.client.post(
        "/v1/pipelines",
        json={"data": {"dataset_id": dataset_id}, "arch": "smallcnn", "truncate": {"cut": "knee"}},
        headers=env.headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    steps = body["steps"]
    assert [s["kind"] for s in steps] == ["train", "analyze", "truncate", "retrain", "compare", "explain"]
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4, 5]
    assert steps[0]["depends_on"] is None
    assert all(steps[i]["depends_on"] == steps[i - 1]["id"] for i in range(1, 6))
    assert env.dispatcher.sent == [(uuid.UUID(steps[0]["id"]), "train")]
    assert body["status"] == "queued"
    ids = [uuid.UUID(s["id"]) for s in steps]
    with env.session() as s:
        jobs = [s.get(Job, i) for i in ids]
    assert all(j.pipeline_id == uuid.UUID(body["id"]) and j.tenant == env.tenant for j in jobs)
    train, analyze, truncate, retrain, compare, explain = (j.params for j in jobs)
    assert analyze["model"] == {"model_id": None, "from_job": str(ids[0])}
    assert truncate["model"]["from_job"] == str(ids[0]) and truncate["analysis_job"] == str(ids[1])
    assert retrain["model"]["from_job"] == str(ids[2]) and retrain["dataset_id"] == dataset_id
    assert compare["base"]["from_job"] == str(ids[0]) and compare["slim"]["from_job"] == str(ids[3])
    assert explain["model"]["from_job"] == str(ids[0]) and explain["compare_with"]["from_job"] == str(ids[3])
    listed = env.client.get("/v1/jobs", params={"pipeline_id": body["id"]}, headers=env.headers).json()["items"]
    assert {j["id"] for j in listed} == {s["id"] for s in steps}


def test_from_model_skips_train_and_stop_after_analyze(env):
    model_id = env.model()
    body = env.client.post(
        "/v1/pipelines", json={"model_id": model_id, "truncate": {"cut": "block3"}}, headers=env.headers
    ).json()
    assert [s["kind"] for s in body["steps"]] == ["analyze", "truncate", "retrain", "compare", "explain"]
    with env.session() as s:
        truncate = s.get(Job, uuid.UUID(body["steps"][1]["id"])).params
    assert truncate["model"]["model_id"] == model_id and truncate["analysis_job"] is None
    short = env.client.post(
        "/v1/pipelines", json={"data": {"dataset_id": env.dataset()}, "stop_after": "analyze"}, headers=env.headers
    ).json()
    assert [s["kind"] for s in short["steps"]] == ["train", "analyze"]


def test_a_pipeline_can_export_its_slim_model(env):
    body = env.client.post(
        "/v1/pipelines",
        json={"model_id": env.model(), "export": {"format": "torchscript", "tolerance": 1e-5}},
        headers=env.headers,
    ).json()
    kinds = [s["kind"] for s in body["steps"]]
    assert kinds == ["analyze", "select", "compare", "export", "explain"]
    with env.session() as s:
        export = s.get(Job, uuid.UUID(body["steps"][3]["id"])).params
    assert export["model"]["from_job"] == body["steps"][1]["id"]  # the slim model the select step keeps
    assert export["export"]["format"] == "torchscript" and export["export"]["tolerance"] == 1e-5
    refused = env.client.post(
        "/v1/pipelines", json={"model_id": env.model(), "export": {"format": "tflite"}}, headers=env.headers
    )
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][:3] == ["body", "export", "format"]


def test_pipeline_validation_names_the_field(env):
    def loc(body):
        response = env.client.post("/v1/pipelines", json=body, headers=env.headers)
        assert response.status_code == 422, response.text
        return response.json()["detail"][0]["loc"]

    assert loc({}) == ["body", "data"]
    assert loc({"data": {"dataset_id": env.dataset(env.other_headers)}}) == ["body", "data", "dataset_id"]
    assert loc({"model_id": env.model(env.other_tenant)}) == ["body", "model_id"]
    assert loc({"data": {"dataset_id": env.dataset()}, "arch": "nope"}) == ["body", "arch"]
    assert loc({"data": {"dataset_id": env.dataset()}, "stop_after": "truncate"}) == ["body", "stop_after"]
    assert env.dispatcher.sent == []


def test_get_list_cancel_and_isolation(env):
    dataset_id = env.dataset()
    made = [
        env.client.post("/v1/pipelines", json={"data": {"dataset_id": dataset_id}}, headers=env.headers).json()["id"]
        for _ in range(3)
    ]
    seen, cursor = [], None
    while True:
        page = env.client.get(
            "/v1/pipelines", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=env.headers
        ).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(made))
    assert env.client.get("/v1/pipelines", headers=env.other_headers).json()["items"] == []
    assert env.client.get(f"/v1/pipelines/{made[0]}", headers=env.other_headers).status_code == 404
    assert env.client.post(f"/v1/pipelines/{made[0]}/cancel", headers=env.other_headers).status_code == 404
    response = env.client.post(f"/v1/pipelines/{made[0]}/cancel", headers=env.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled" and {s["status"] for s in body["steps"]} == {"cancelled"}
    assert env.client.post(f"/v1/pipelines/{made[0]}/cancel", headers=env.headers).status_code == 409
    assert env.client.get(f"/v1/pipelines/{made[1]}", headers=env.headers).json()["status"] == "queued"


def test_pipeline_idempotency(env):
    body = {"data": {"dataset_id": env.dataset()}}
    headers = {**env.headers, "Idempotency-Key": "pipe-1"}
    first = env.client.post("/v1/pipelines", json=body, headers=headers)
    again = env.client.post("/v1/pipelines", json=body, headers=headers)
    other = env.client.post("/v1/pipelines", json={**body, "stop_after": "analyze"}, headers=headers)
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 422)
    assert first.json()["id"] == again.json()["id"] and first.json()["steps"] == again.json()["steps"]
    assert len(env.dispatcher.sent) == 1


def test_plan_steps_follow_the_plan_for_every_variant():
    from layercut.api.routes.pipelines import plan_steps
    from layercut.api.schemas.pipelines import PipelineCreate
    from layercut.contracts.plan import cut_rule, pipeline_plan

    model_id, dataset_id = uuid.uuid4(), uuid.uuid4()
    for stop_after in ("analyze", "compare", "explain"):
        for cut in ("auto", "knee", "2"):
            for start in ({"data": {"dataset_id": str(dataset_id)}}, {"model_id": str(model_id)}):
                body = PipelineCreate.model_validate({**start, "stop_after": stop_after, "truncate": {"cut": cut}})
                steps = plan_steps(body)
                plan = pipeline_plan(train="data" in start, stop_after=stop_after, cut=cut_rule(cut))
                assert [params.kind for _, params in steps] == list(plan.kinds)
                ids = {params.kind: job_id for job_id, params in steps}
                base = {"from_job": ids["train"]} if "data" in start else {"model_id": model_id}
                by_kind = {params.kind: params for _, params in steps}
                assert by_kind["analyze"].model.model_dump(exclude_none=True) == base
                if "truncate" in by_kind:
                    assert by_kind["truncate"].analysis_job == (ids["analyze"] if cut == "knee" else None)
                    assert by_kind["retrain"].model.from_job == ids["truncate"]
                    assert by_kind["compare"].slim.from_job == ids["retrain"]
                if "select" in by_kind:
                    assert by_kind["select"].analysis_job == ids["analyze"] and cut == "auto"
                    assert by_kind["compare"].slim.from_job == ids["select"]
                assert ("explain" in by_kind) == (stop_after == "explain")


def test_a_pipeline_logged_to_mlflow_ends_with_an_mlflow_step_on_a_server_that_has_one(env):
    dataset = env.dataset()
    asked = {"data": {"dataset_id": dataset}, "mlflow": {"experiment": "pets", "registered_model": "pets-small"}}
    refused = env.client.post("/v1/pipelines", json=asked, headers=env.headers)
    assert refused.status_code == 422, refused.text
    (detail,) = refused.json()["detail"]
    assert detail["loc"] == ["body", "mlflow"] and "LAYERCUT_MLFLOW_TRACKING_URI" in detail["msg"]

    env.settings.mlflow_tracking_uri = "http://user:secret@mlflow.internal:5000"
    partial = {"data": {"dataset_id": dataset}, "stop_after": "compare", "mlflow": {}}
    refused = env.client.post("/v1/pipelines", json=partial, headers=env.headers)
    assert refused.status_code == 422 and "whole run" in refused.json()["detail"][0]["msg"]
    assert env.dispatcher.sent == []
    model = env.model()
    given = env.client.post("/v1/pipelines", json={"model_id": model, "mlflow": {}}, headers=env.headers).json()
    assert [s["kind"] for s in given["steps"]] == ["analyze", "select", "compare", "explain", "mlflow"]
    with env.session() as s:
        params = s.get(Job, uuid.UUID(given["steps"][-1]["id"])).params
    assert params["base"] == {"model_id": model, "from_job": None} and "train" not in params["steps"]

    body = env.client.post("/v1/pipelines", json={**asked, "select": {"max_drop": 2.0}}, headers=env.headers).json()
    assert [s["kind"] for s in body["steps"]] == ["train", "analyze", "select", "compare", "explain", "mlflow"]
    ids = {s["kind"]: s["id"] for s in body["steps"]}
    with env.session() as s:
        params = s.get(Job, uuid.UUID(ids["mlflow"])).params
    assert params["steps"] == {kind: job_id for kind, job_id in ids.items() if kind != "mlflow"}
    assert params["base"] == {"model_id": None, "from_job": ids["train"]}
    assert params["mlflow"] == {"experiment": "pets", "registered_model": "pets-small"}
    assert params["select"]["max_drop"] == 2.0 and "secret" not in str(params)  # the server's URI stays its own
    direct = env.client.post("/v1/jobs", json={"params": {"kind": "mlflow", "steps": {}}}, headers=env.headers)
    assert direct.status_code == 422
