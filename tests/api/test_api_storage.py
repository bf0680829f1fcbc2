"""The artifact volume is protected (issue 11, items 6 and 9): zip bombs are refused on their declared sizes before
anything is extracted, extractions per process are bounded, a tenant's storage quota is kept, and a full disk is a
507 ``storage_full`` that leaves nothing half-written behind."""

from __future__ import annotations

import errno
import io
import json
import tarfile
import threading
import uuid
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import update

from layercut.api import uploads
from layercut.artifacts import folder_bytes
from layercut.settings import Settings
from layercut.store.models import Artifact, Job
from layercut.testing.api_env import make_env

PNG = b"\x89PNG\r\n\x1a\nfake"
GOOD = [("d/cat/1.png", PNG), ("d/cat/2.png", PNG), ("d/dog/1.png", PNG), ("d/dog/2.png", PNG)]
STORAGE_FULL = "storage_full: the artifact volume is full; free space or raise the quota"
SPEC = json.dumps(
    {"architecture": "resnet18", "classes": ["cat", "dog"], "image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3}
)


def zip_bytes(members, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_gz_bytes(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def upload(env, data: bytes, filename: str = "d.zip"):
    return env.client.post("/v1/datasets/upload", files={"file": (filename, data)}, headers=env.headers)


def import_weights(env, data: bytes):
    return env.client.post(
        "/v1/models/import", files={"weights": ("w.safetensors", data)}, data={"spec": SPEC}, headers=env.headers
    )


def tenant_folder(env) -> Path:
    return env.settings.resolved_artifact_root / env.tenant


def leftovers(env, folder: str) -> list[str]:
    """Every file and folder under the tenant's ``folder`` (``datasets``, ``imports``) but the empty ``.incoming``."""
    base = tenant_folder(env) / folder
    if not base.exists():
        return []
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.name != ".incoming")


BOMBS = {
    # one member of 4 MiB of zeros: ~1000:1
    "zip_member": ("bomb.zip", lambda: zip_bytes(GOOD + [("d/dog/big.png", bytes(4 << 20))])),
    # many members each under the 1 MiB floor, the whole archive still ~300:1
    "zip_many_small": (
        "bomb.zip",
        lambda: zip_bytes(GOOD + [(f"d/dog/s{i}.png", bytes(60_000)) for i in range(40)]),
    ),
    # a tar.gz has no per-member compressed size: the whole archive's ratio
    "tar_gz": ("bomb.tgz", lambda: tar_gz_bytes(GOOD + [("d/dog/big.png", bytes(4 << 20))])),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_zip_bomb_is_refused_on_its_declared_sizes_before_anything_is_extracted(env, monkeypatch, bomb):
    filename, build = BOMBS[bomb]
    copied = []
    real_copy = uploads._copy
    monkeypatch.setattr(uploads, "_copy", lambda *a, **k: copied.append(a[1]) or real_copy(*a, **k))
    response = upload(env, build(), filename)
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "zip bomb" in detail and "LAYERCUT_UPLOAD_MAX_RATIO" in detail and ":1" in detail, detail
    assert copied == [], "members were written before the archive was refused"
    assert leftovers(env, "datasets") == []


def test_a_well_compressed_small_archive_and_a_stored_one_still_upload(env):
    # a few KiB of text compress far beyond 200:1 but are under the 1 MiB floor; a stored (uncompressed) archive
    # of 2 MiB has a ratio of 1
    small = zip_bytes(GOOD + [("d/readme.txt", b"a" * 50_000)])
    stored = zip_bytes(GOOD + [("d/dog/big.png", bytes(2 << 20))], zipfile.ZIP_STORED)
    assert upload(env, small).status_code == 201
    assert upload(env, stored).status_code == 201


def test_the_default_unpacked_limit_is_2_gib_and_the_new_limits_have_defaults():
    settings = Settings(_env_file=None)
    assert settings.upload_max_unpacked_bytes == 2 * 1024**3
    assert settings.upload_max_ratio == 200
    assert settings.upload_max_concurrent_extractions == 2
    assert settings.tenant_quota_bytes == 0


def test_an_upload_beyond_the_concurrent_extractions_waits_then_gets_503(postgres_url, tmp_path):
    env = make_env(postgres_url, tmp_path, upload_max_concurrent_extractions=1, upload_extraction_wait_seconds=0.3)
    try:
        slots = uploads.extraction_slots(env.app.state, 1)
        held = slots._free
        assert held.acquire(blocking=False)  # another upload is being extracted
        try:
            refused = upload(env, zip_bytes(GOOD))
        finally:
            held.release()
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "5" and "LAYERCUT_UPLOAD_MAX_CONCURRENT_EXTRACTIONS" in refused.text
        assert leftovers(env, "datasets") == []

        # a slot freed while the request waits lets it through
        assert held.acquire(blocking=False)
        threading.Timer(0.1, held.release).start()
        env.settings.upload_extraction_wait_seconds = 5.0
        assert upload(env, zip_bytes(GOOD)).status_code == 201
        assert held.acquire(blocking=False), "the upload did not give its slot back"
        held.release()
    finally:
        env.client.close()


def test_an_upload_or_import_past_the_tenant_quota_is_a_507_saying_what_to_do(postgres_url, tmp_path):
    env = make_env(postgres_url, tmp_path, tenant_quota_bytes=100_000)
    try:
        archive = zip_bytes(GOOD + [("d/dog/big.png", bytes(range(256)) * 100)], zipfile.ZIP_STORED)  # ~25 kB
        assert upload(env, archive).status_code == 201  # well within the quota
        # a job's artifacts live under the tenant's folder: they count
        env.finished_job(artifacts={"model.safetensors": (b"\x00" * 70_000, "application/octet-stream")})
        before = leftovers(env, "datasets")

        response = upload(env, archive)
        assert response.status_code == 507, response.text
        detail = response.json()["detail"]
        assert "storage quota exceeded" in detail and "LAYERCUT_TENANT_QUOTA_BYTES" in detail
        assert "100000 bytes" in detail and "DELETE /v1/datasets/{id}" in detail, detail
        assert str(tmp_path) not in detail
        assert leftovers(env, "datasets") == before  # nothing new: no partial folder, no archive

        imported = import_weights(env, b"\x00" * 40_000)
        assert imported.status_code == 507, imported.text
        assert "storage quota exceeded" in imported.json()["detail"]
        assert leftovers(env, "imports") == []
        with env.session() as s:
            assert s.query(Job).filter(Job.tenant == env.tenant, Job.kind == "import").count() == 0

        # the other tenant's usage is its own
        other = env.client.post("/v1/datasets/upload", files={"file": ("d.zip", archive)}, headers=env.other_headers)
        assert other.status_code == 201, other.text
    finally:
        env.client.close()


def test_the_quota_walk_counts_files_and_stops_at_its_bound(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one").write_bytes(b"x" * 10)
    (tmp_path / "a" / "b" / "two").write_bytes(b"x" * 20)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "one")  # not followed
    assert folder_bytes(tmp_path) == 30
    assert folder_bytes(tmp_path / "missing") == 0
    assert folder_bytes(tmp_path, max_entries=2) <= 30


class FillingFile:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, real, room: list[int]) -> None:
        self.real, self.room = real, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room[0]:
            self.real.write(data[: self.room[0]])
            self.room[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room[0] -= len(data)
        return self.real.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()

    def __getattr__(self, name):
        return getattr(self.real, name)


def fill_extraction_after(monkeypatch, room: int) -> None:
    """Member writes (``open`` in ``layercut.api.uploads``) fill the disk after ``room`` bytes."""
    left = [room]
    monkeypatch.setattr(
        uploads, "open", lambda path, mode="r", *a, **k: FillingFile(open(path, mode, *a, **k), left), raising=False
    )


def fill_saving_after(monkeypatch, room: int) -> None:
    """The upload's temp file (``os.fdopen`` in ``save_upload``) fills the disk after ``room`` bytes."""
    left = [room]
    real_fdopen = uploads.os.fdopen

    def fdopen(fd, mode="r", *a, **k):
        real = real_fdopen(fd, mode, *a, **k)
        return FillingFile(real, left) if mode == "wb" else real

    monkeypatch.setattr(uploads.os, "fdopen", fdopen)


def assert_storage_full(response, tmp_path: Path) -> None:
    assert response.status_code == 507, response.text
    assert response.json() == {"detail": STORAGE_FULL, "code": "storage_full"}
    assert str(tmp_path) not in response.text


ARCHIVE = zip_bytes(GOOD + [(f"d/dog/x{i}.png", bytes(range(256)) * 64) for i in range(8)], zipfile.ZIP_STORED)


@pytest.mark.parametrize("where", ["extracting", "saving"])
@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_a_full_disk_during_an_upload_is_a_507_with_nothing_left(env, monkeypatch, tmp_path, where, fmt):
    data = (
        ARCHIVE
        if fmt == "zip"
        else tar_gz_bytes(GOOD + [(f"d/dog/x{i}.png", bytes(range(256)) * 64) for i in range(8)])
    )
    (fill_extraction_after if where == "extracting" else fill_saving_after)(
        monkeypatch, 1_000 if where == "saving" else 20_000
    )
    response = upload(env, data, f"d.{fmt}")
    assert_storage_full(response, tmp_path)
    assert leftovers(env, "datasets") == []  # no temp archive in .incoming, no partial dataset folder
    assert env.client.get("/v1/datasets", headers=env.headers).json()["items"] == []
    monkeypatch.undo()
    assert upload(env, data, f"d.{fmt}").status_code == 201  # once there is room again, the same upload works


def test_a_full_disk_during_a_model_import_is_a_507_with_nothing_left(env, monkeypatch, tmp_path):
    fill_saving_after(monkeypatch, 10_000)
    response = import_weights(env, b"\x00" * 50_000)
    assert_storage_full(response, tmp_path)
    assert leftovers(env, "imports") == []
    assert env.dispatcher.sent == []
    with env.session() as s:
        assert s.query(Job).filter(Job.tenant == env.tenant).count() == 0


def test_a_full_disk_anywhere_in_a_route_is_a_507_not_a_500(env, monkeypatch, tmp_path):
    """The app-wide handler: an ENOSPC the route did not expect (here: making the dataset's folder) is still a 507
    naming no server path."""
    real_extract = uploads.extract_archive

    def no_room_for_folders(archive, dest, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr("layercut.api.routes.datasets.extract_archive", no_room_for_folders)
    assert_storage_full(upload(env, zip_bytes(GOOD)), tmp_path)
    assert leftovers(env, "datasets") == []
    assert real_extract is uploads.extract_archive


def test_an_unreachable_object_store_is_a_503_that_names_nothing_of_the_server(postgres_url, tmp_path):
    from layercut.testing.commands import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = make_env(
        postgres_url,
        tmp_path,
        artifact_url="s3://layercut-down/prefix",
        s3_endpoint_url=endpoint,
        s3_region="us-east-1",
        s3_access_key_id="key",
        s3_secret_access_key="secret",
    )
    try:
        job = env.finished_job(artifacts={"metrics.json": (b"{}", "application/json")})
        with env.session() as s:  # a file the report shows, not cached on this machine
            s.execute(update(Artifact).where(Artifact.job_id == uuid.UUID(job)).values(kind="metrics"))
            s.commit()
        (env.settings.resolved_artifact_root / env.tenant / job / "metrics.json").unlink()
        listed = env.client.get(f"/v1/jobs/{job}/artifacts", headers=env.headers).json()
        for path in (listed[0]["download_url"], f"/v1/jobs/{job}/report"):
            response = env.client.get(path, headers=env.headers)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["code"] == "artifact_store_unavailable" and response.headers["Retry-After"]
            assert "127.0.0.1" not in response.text and "layercut-down" not in response.text
        ready = env.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["artifacts"] == "unavailable"
        # another tenant still gets a 404 for it, before the store is asked
        assert env.client.get(listed[0]["download_url"], headers=env.other_headers).status_code == 404
        upload = env.client.post(
            "/v1/datasets/upload",
            files={"file": ("d.zip", zip_bytes([("d/cat/0.png", b"x"), ("d/dog/0.png", b"y")]))},
            headers=env.headers,
        )
        assert upload.status_code == 503, upload.text
        assert not list((env.settings.resolved_artifact_root / env.tenant / "datasets").glob("*-*"))
    finally:
        env.client.close()


def test_downloads_can_be_redirects_to_the_object_store(postgres_url, tmp_path, s3_server):
    """With presigned URLs on, a download is a 307 to a short-lived URL of the store that serves the same bytes under
    the same file name; a file missing from the store is still a 404, and another tenant still gets nothing."""
    import httpx

    from layercut.artifacts import artifact_store

    bucket = s3_server.new_bucket()
    env = make_env(postgres_url, tmp_path, artifact_presigned_seconds=60, **s3_server.settings(bucket))
    try:
        job = env.finished_job(artifacts={"metrics.json": (b'{"accuracy": 0.9}', "application/json")})
        store = artifact_store(env.settings)
        store.publish_file(store.path(f"{env.tenant}/{job}/metrics.json"))
        listed = env.client.get(f"/v1/jobs/{job}/artifacts", headers=env.headers).json()
        answer = env.client.get(listed[0]["download_url"], headers=env.headers, follow_redirects=False)
        assert answer.status_code == 307, answer.text
        fetched = httpx.get(answer.headers["location"], timeout=10)
        assert fetched.content == b'{"accuracy": 0.9}'
        assert 'filename="metrics.json"' in fetched.headers["content-disposition"]
        assert env.client.get(listed[0]["download_url"], headers=env.other_headers).status_code == 404
        store.delete_file(f"{env.tenant}/{job}/metrics.json")
        assert env.client.get(listed[0]["download_url"], headers=env.headers, follow_redirects=False).status_code == 404
    finally:
        env.client.close()
