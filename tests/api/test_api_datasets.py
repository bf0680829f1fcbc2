"""Datasets: builtins, folders under the roots only, scanning, pagination, isolation, delete."""

from __future__ import annotations

import os

import pytest


def test_register_builtin(env):
    response = env.client.post("/v1/datasets", json={"kind": "builtin", "builtin": "digits"}, headers=env.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["classes"] == [str(d) for d in range(10)] and body["total_images"] == 1797


def test_register_split_folder_gives_counts_per_split(env):
    folder = env.image_folder("flowers", classes=("daisy", "rose", "tulip"), per_class=2, split=True)
    (folder / "train" / "rose" / ".DS_Store").write_bytes(b"x")
    (folder / "train" / "rose" / "notes.txt").write_text("x")
    response = env.client.post("/v1/datasets", json={"kind": "folder", "path": str(folder)}, headers=env.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "flowers" and body["classes"] == ["daisy", "rose", "tulip"]
    assert body["counts"] == {"train": {"daisy": 2, "rose": 2, "tulip": 2}, "val": {"daisy": 2, "rose": 2, "tulip": 2}}
    assert body["total_images"] == 12


def _detail(response):
    detail = response.json()["detail"]
    return detail[0] if isinstance(detail, list) else detail


@pytest.mark.parametrize("case", ["outside", "symlink_escape", "relative", "missing", "traversal"])
def test_folder_outside_the_roots_is_rejected(env, case):
    outside = env.tmp / "elsewhere" / "data"
    for c in ("a", "b"):
        (outside / c).mkdir(parents=True, exist_ok=True)
        (outside / c / "1.png").write_bytes(b"x")
    path = {
        "outside": str(outside),
        "relative": "roots/ds",
        "missing": str(env.tmp / "roots" / env.tenant / "nope"),
        "traversal": str(env.tmp / "roots" / env.tenant / ".." / ".." / "elsewhere" / "data"),
    }.get(case)
    if case == "symlink_escape":
        link = env.tmp / "roots" / env.tenant / "innocent"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(outside, link)
        path = str(link)
    response = env.client.post("/v1/datasets", json={"kind": "folder", "path": path}, headers=env.headers)
    assert response.status_code == 422, response.text
    assert _detail(response)["loc"] == ["body", "path"]


def test_a_tenant_reaches_only_its_own_folder_and_learns_nothing_of_the_rest(env):
    """Another tenant's folder, a server file and a path that does not exist outside the tenant's folder all get
    the same answer, which names no server folder; inside its own folder a tenant is told what is missing."""
    theirs = env.tmp / "roots" / env.other_tenant / "pets"
    for c in ("cat", "dog"):
        (theirs / c).mkdir(parents=True, exist_ok=True)
        (theirs / c / "1.png").write_bytes(b"x")

    def answer(path: str) -> dict:
        response = env.client.post("/v1/datasets", json={"kind": "folder", "path": path}, headers=env.headers)
        assert response.status_code == 422, response.text
        return _detail(response)

    paths = [str(theirs), "/etc/shadow", "/etc/no-such-file", str(env.tmp / "roots")]
    answers = [answer(path) for path in paths]
    messages = {a["msg"].replace(repr(path), "PATH") for a, path in zip(answers, paths)}
    assert len(messages) == 1 and all(a["type"] == "forbidden" for a in answers)
    assert str(env.tmp) not in messages.pop()  # no server folder named
    assert "does not exist in your dataset folders" in answer(str(env.tmp / "roots" / env.tenant / "nope"))["msg"]
    mine = env.client.post("/v1/datasets", json={"kind": "folder", "path": str(theirs)}, headers=env.other_headers)
    assert mine.status_code == 201, mine.text  # the owner registers it


def test_no_roots_configured_refuses_folders(postgres_url, tmp_path):
    from layercut.testing.api_env import make_env

    e = make_env(postgres_url, tmp_path)
    e.settings.dataset_roots = []
    response = e.client.post("/v1/datasets", json={"kind": "folder", "path": str(tmp_path)}, headers=e.headers)
    assert response.status_code == 422 and _detail(response)["loc"] == ["body", "path"]


def test_empty_class_and_single_class_are_named(env):
    folder = env.image_folder("one", classes=("cat", "dog"))
    (folder / "empty").mkdir()
    response = env.client.post("/v1/datasets", json={"kind": "folder", "path": str(folder)}, headers=env.headers)
    assert response.status_code == 422 and "'empty'" in _detail(response)["msg"]
    single = env.image_folder("single", classes=("cat",))
    response = env.client.post("/v1/datasets", json={"kind": "folder", "path": str(single)}, headers=env.headers)
    assert response.status_code == 422 and "'cat'" in _detail(response)["msg"]


def test_unknown_kind_or_builtin_names_the_field(env):
    response = env.client.post("/v1/datasets", json={"kind": "builtin", "builtin": "imagenet"}, headers=env.headers)
    assert response.status_code == 422 and "builtin" in _detail(response)["loc"]


def test_list_get_delete_and_isolation(env):
    ids = [env.dataset() for _ in range(5)]
    other = env.dataset(env.other_headers)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = env.client.get("/v1/datasets", params=params, headers=env.headers).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))  # newest first, each exactly once, none of the other tenant's
    assert env.client.get(f"/v1/datasets/{other}", headers=env.headers).status_code == 404
    assert env.client.delete(f"/v1/datasets/{other}", headers=env.headers).status_code == 404
    assert env.client.get(f"/v1/datasets/{ids[0]}", headers=env.headers).status_code == 200
    assert env.client.delete(f"/v1/datasets/{ids[0]}", headers=env.headers).status_code == 204
    assert env.client.get(f"/v1/datasets/{ids[0]}", headers=env.headers).status_code == 404
    assert env.client.get(f"/v1/datasets/{other}", headers=env.other_headers).status_code == 200


def test_delete_refused_while_a_job_uses_it(env):
    dataset_id = env.dataset()
    job = env.client.post(
        "/v1/jobs", json={"params": {"kind": "train", "data": {"dataset_id": dataset_id}}}, headers=env.headers
    ).json()
    response = env.client.delete(f"/v1/datasets/{dataset_id}", headers=env.headers)
    assert response.status_code == 409 and job["id"] in response.json()["detail"]
    env.client.post(f"/v1/jobs/{job['id']}/cancel", headers=env.headers)
    assert env.client.delete(f"/v1/datasets/{dataset_id}", headers=env.headers).status_code == 204


def test_idempotent_registration(env):
    h = {**env.headers, "Idempotency-Key": "ds-1"}
    first = env.client.post("/v1/datasets", json={"kind": "builtin", "builtin": "textures"}, headers=h)
    again = env.client.post("/v1/datasets", json={"kind": "builtin", "builtin": "textures"}, headers=h)
    other = env.client.post("/v1/datasets", json={"kind": "builtin", "builtin": "digits"}, headers=h)
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 422)
    assert first.json()["id"] == again.json()["id"]
    assert _detail(other)["loc"] == ["header", "Idempotency-Key"]
    # the same key is free for another tenant
    theirs = env.client.post(
        "/v1/datasets",
        json={"kind": "builtin", "builtin": "digits"},
        headers={**env.other_headers, "Idempotency-Key": "ds-1"},
    )
    assert theirs.status_code == 201


def test_the_same_builtin_again_is_the_same_dataset_unless_named(env):
    """Registering a built-in set twice gives back the first (200), so lists do not fill with identical entries;
    a name registers another copy under that name."""
    first = env.client.post("/v1/datasets", json={"kind": "builtin", "builtin": "scenes"}, headers=env.headers)
    again = env.client.post("/v1/datasets", json={"kind": "builtin", "builtin": "scenes"}, headers=env.headers)
    named = env.client.post(
        "/v1/datasets", json={"kind": "builtin", "builtin": "scenes", "name": "scenes-b"}, headers=env.headers
    )
    assert (first.status_code, again.status_code, named.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != named.json()["id"]
    listed = env.client.get("/v1/datasets", headers=env.headers).json()["items"]
    assert sorted(d["name"] for d in listed if d["kind"] == "builtin") == ["scenes", "scenes-b"]
