"""The artifact store's two implementations: the volume, and object storage on a real S3 server (moto's, a separate
process on loopback). Two ObjectStores with different roots stand for two machines sharing one bucket."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from layercut.artifacts import (
    ArtifactStoreError,
    ObjectStore,
    VolumeStore,
    artifact_store,
    check_key,
    file_sha256,
    parse_s3_url,
)
from layercut.contracts.errors import MissingResourceError
from layercut.settings import Settings


@pytest.fixture
def bucket(s3_server) -> str:
    return s3_server.new_bucket()


def machine(s3_server, bucket: str, root: Path) -> ObjectStore:
    settings = Settings(artifact_root=root, **s3_server.settings(bucket))
    store = artifact_store(settings)
    assert isinstance(store, ObjectStore) and store.remote and store.root == root.resolve()
    return store


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_a_folder_published_on_one_machine_is_fetched_on_another(s3_server, bucket, tmp_path) -> None:
    worker = machine(s3_server, bucket, tmp_path / "worker")
    api = machine(s3_server, bucket, tmp_path / "api")
    job = write(worker.path("t1/job-1/model.safetensors"), b"weights" * 1000).parent
    write(job / "metrics.json", b'{"accuracy": 0.9}')
    write(job / "figures" / "curve.png", b"\x89PNG")
    write(job / "half.safetensors.partial", b"being written")  # never published
    worker.publish(job)

    assert s3_server.objects(bucket) == {
        "artifacts/t1/job-1/model.safetensors": 7000,
        "artifacts/t1/job-1/metrics.json": 17,
        "artifacts/t1/job-1/figures/curve.png": 4,
    }
    assert s3_server.client().head_object(Bucket=bucket, Key="artifacts/t1/job-1/metrics.json")["ContentType"] == (
        "application/json"
    )
    fetched = api.local("t1/job-1/model.safetensors", size=7000, sha256=sha(b"weights" * 1000))
    assert fetched == tmp_path.resolve() / "api" / "t1/job-1/model.safetensors"
    assert fetched.read_bytes() == b"weights" * 1000
    assert api.local("t1/job-1/metrics.json").read_bytes() == b'{"accuracy": 0.9}'  # no record: the stored size
    tree = api.local_tree("t1/job-1")
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()) == [
        "figures/curve.png",
        "metrics.json",
        "model.safetensors",
    ]
    stored = api.open("t1/job-1/figures/curve.png")
    assert stored.size == 4 and b"".join(stored.blocks) == b"\x89PNG"
    assert api.usage("t1") == 7000 + 17 + 4 and api.usage("t2") == 0


def test_a_stale_or_damaged_copy_is_never_used(s3_server, bucket, tmp_path) -> None:
    first = machine(s3_server, bucket, tmp_path / "a")
    second = machine(s3_server, bucket, tmp_path / "b")
    key = "t1/job-2/model.safetensors"
    write(first.path(key), b"attempt 1")
    first.publish(first.path(key).parent)
    assert second.local(key, size=9, sha256=sha(b"attempt 1")).read_bytes() == b"attempt 1"

    # a later attempt on the first machine made other weights of the same size: the second machine's cached copy
    # differs from the recorded SHA-256 and is fetched again
    write(first.path(key), b"attempt 2")
    first.publish(first.path(key).parent)
    assert second.local(key, size=9, sha256=sha(b"attempt 2")).read_bytes() == b"attempt 2"

    # the stored object was changed behind the database's back: refused, and the cached copy is not replaced
    s3_server.client().put_object(Bucket=bucket, Key=f"artifacts/{key}", Body=b"tampered!")
    cached = second.path(key)
    cached.unlink()
    with pytest.raises(ArtifactStoreError, match="does not match what the database recorded"):
        second.local(key, size=9, sha256=sha(b"attempt 2"))
    assert not cached.exists() and not list(cached.parent.glob("*.part"))


def test_publishing_again_removes_what_the_folder_no_longer_holds(s3_server, bucket, tmp_path) -> None:
    store = machine(s3_server, bucket, tmp_path / "w")
    folder = write(store.path("t1/job-3/old.png"), b"old").parent
    store.publish(folder)
    (folder / "old.png").unlink()
    write(folder / "new.png", b"new")
    store.publish(folder)
    assert set(s3_server.objects(bucket, "artifacts/t1/job-3/")) == {"artifacts/t1/job-3/new.png"}


def test_deleting_removes_the_stored_and_the_local_files(s3_server, bucket, tmp_path) -> None:
    store = machine(s3_server, bucket, tmp_path / "w")
    for name in ("a.json", "b/c.png"):
        write(store.path(f"t1/job-4/{name}"), b"x")
    write(store.path("t1/logs/job-4.log"), b"line\n")
    write(store.path("t1/job-5/keep.json"), b"y")
    store.publish(store.path("t1/job-4"))
    store.publish(store.path("t1/job-5"))
    store.publish_file(store.path("t1/logs/job-4.log"))
    store.delete_tree("t1/job-4")
    store.delete_file("t1/logs/job-4.log")
    assert set(s3_server.objects(bucket)) == {"artifacts/t1/job-5/keep.json"}
    assert not store.path("t1/job-4").exists() and not store.path("t1/logs/job-4.log").exists()


def test_a_growing_file_is_read_in_its_newest_stored_version(s3_server, bucket, tmp_path) -> None:
    worker = machine(s3_server, bucket, tmp_path / "worker")
    api = machine(s3_server, bucket, tmp_path / "api")
    assert api.newest("t1/logs/job-6.log") is None
    log = write(worker.path("t1/logs/job-6.log"), b"attempt 1\n")
    worker.publish_file(log)
    assert api.newest("t1/logs/job-6.log").read_bytes() == b"attempt 1\n"
    log.write_bytes(b"attempt 1\nattempt 2\n")
    worker.publish_file(log)
    assert api.newest("t1/logs/job-6.log").read_bytes() == b"attempt 1\nattempt 2\n"


def test_what_is_not_stored_is_a_missing_resource(s3_server, bucket, tmp_path) -> None:
    store = machine(s3_server, bucket, tmp_path / "w")
    with pytest.raises(MissingResourceError, match="t1/nothing.json is not in the artifact store"):
        store.local("t1/nothing.json")
    with pytest.raises(MissingResourceError, match="t1/no-folder is not in the artifact store"):
        store.local_tree("t1/no-folder")
    with pytest.raises(MissingResourceError):
        store.open("t1/nothing.json")


def test_an_unreachable_store_is_an_error_that_names_no_endpoint(tmp_path) -> None:
    from layercut.testing.commands import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    settings = Settings(
        artifact_root=tmp_path,
        artifact_url="s3://nowhere-bucket/x",
        s3_endpoint_url=endpoint,
        s3_access_key_id="k",
        s3_secret_access_key="s",
        s3_region="us-east-1",
    )
    store = artifact_store(settings)
    with pytest.raises(ArtifactStoreError, match="could not be reached") as caught:
        store.local("t1/job/model.safetensors", size=1, sha256="0" * 64)
    assert endpoint not in str(caught.value) and "127.0.0.1" not in str(caught.value)


def test_keys_and_urls_are_checked() -> None:
    assert check_key("t1/job/model.safetensors") == "t1/job/model.safetensors"
    for bad in ("", "/etc/passwd", "t1/../t2/x", "t1//x", "./x", "t1\\x"):
        with pytest.raises(ValueError):
            check_key(bad)
    assert parse_s3_url("s3://bucket/some/prefix/") == ("bucket", "some/prefix/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        Settings(artifact_url="https://bucket/prefix")
    with pytest.raises(ValueError):
        Settings(artifact_url="s3:///prefix")


def test_the_volume_is_the_store_itself(tmp_path) -> None:
    store = artifact_store(Settings(artifact_root=tmp_path))
    assert isinstance(store, VolumeStore) and not store.remote
    job = write(store.path("t1/job/model.safetensors"), b"w").parent
    store.publish(job)  # nothing to move
    assert store.local("t1/job/model.safetensors") == tmp_path.resolve() / "t1/job/model.safetensors"
    assert store.local_tree("t1/job") == job and store.usage("t1") == 1
    assert file_sha256(store.local("t1/job/model.safetensors")) == sha(b"w")
    assert b"".join(store.open("t1/job/model.safetensors").blocks) == b"w"
    with pytest.raises(MissingResourceError, match="missing on the artifact volume"):
        store.local("t1/job/other")
    store.delete_tree("t1/job")
    assert not job.exists() and store.usage("t1") == 0


def test_the_cache_keeps_its_limit_without_touching_what_running_jobs_hold(s3_server, bucket, tmp_path) -> None:
    store = machine(s3_server, bucket, tmp_path / "w")
    long_ago = time.time() - 3600
    for i in range(5):  # job-0 is the least recently used
        path = write(store.path(f"t1/job-{i}/model.safetensors"), b"x" * 1000)
        os.utime(path, (long_ago + i, long_ago + i))
    write(store.path("t1/job-new/metrics.json"), b"y" * 1000)  # just used: never trimmed
    in_use = store.root / ".in-use"
    in_use.mkdir()
    (in_use / f"{os.getppid()}.json").write_text('["t1/job-0"]')  # a live process of this machine holds job-0
    gone = subprocess.Popen(["true"])
    gone.wait()
    (in_use / f"{gone.pid}.json").write_text('["t1/job-2"]')  # a process that ended holds nothing

    assert store.trim(10_000) == 0  # under the limit: nothing walked away
    with store.holding("t1/job-1"):
        assert (in_use / f"{os.getpid()}.json").is_file()
        removed = store.trim(2_500)
    assert not (in_use / f"{os.getpid()}.json").exists()

    assert removed == 3_000  # job-2, 3 and 4; the rest is held or recent, so the cache stays at 3,000 bytes
    left = sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file())
    assert left == [
        f".in-use/{os.getppid()}.json",
        "t1/job-0/model.safetensors",
        "t1/job-1/model.safetensors",
        "t1/job-new/metrics.json",
    ]
    assert not store.path("t1/job-2").exists()  # emptied folders go too


def test_what_a_job_fetches_is_held_until_it_ends(s3_server, bucket, tmp_path) -> None:
    worker = machine(s3_server, bucket, tmp_path / "worker")
    api = machine(s3_server, bucket, tmp_path / "api")
    write(worker.path("t1/datasets/d1/cat/0.png"), b"png")
    worker.publish(worker.path("t1/datasets/d1"))
    write(worker.path("t1/job-7/model.safetensors"), b"w")
    worker.publish(worker.path("t1/job-7"))
    held = api.root / ".in-use" / f"{os.getpid()}.json"
    with api.holding("t1/job-8"):
        api.local_tree("t1/datasets/d1")
        api.local("t1/job-7/model.safetensors", size=1, sha256=sha(b"w"))
        assert sorted(json.loads(held.read_text())) == ["t1/datasets/d1", "t1/job-7/model.safetensors", "t1/job-8"]
    assert not held.exists()
    api.local("t1/job-7/model.safetensors")  # outside a job: fetched, not held
    assert not held.exists()


def test_the_orphan_sweep_empties_what_no_row_names_in_the_bucket(s3_server, bucket, tmp_path, postgres_url) -> None:
    """An API killed between storing an upload and recording it leaves objects no row names: the reaper's sweep
    removes them from the bucket once old enough, and keeps what a dataset row or an unfinished import names."""
    import uuid as uuid_module

    from layercut.jobs.retention import remove_orphans
    from layercut.store.db import get_sessionmaker
    from layercut.store.models import Dataset, Job

    settings = Settings(
        database_url=postgres_url,
        artifact_root=tmp_path / "api",
        orphan_after_seconds=0.01,
        **s3_server.settings(bucket),
    )
    store = artifact_store(settings)
    tenant, kept, lost = f"t-orphans-{uuid_module.uuid4().hex[:6]}", uuid_module.uuid4(), uuid_module.uuid4()
    importing, abandoned = uuid_module.uuid4(), uuid_module.uuid4()
    for key in (
        f"{tenant}/datasets/{kept}/data/cat/0.png",
        f"{tenant}/datasets/{lost}/data/cat/0.png",
        f"{tenant}/imports/{importing}/weights.pt",
        f"{tenant}/imports/{abandoned}/weights.pt",
    ):
        store.publish_file(write(store.path(key), b"x"))
        store.release(store.path(key))
    with get_sessionmaker(postgres_url)() as session:
        session.add(Dataset(tenant=tenant, name="kept", kind="upload", location=f"{tenant}/datasets/{kept}/data"))
        session.add(Job(id=importing, tenant=tenant, kind="import", status="queued", params={}))
        session.commit()
    time.sleep(0.05)
    assert remove_orphans(settings, force=True)["folders"] == 2
    assert set(s3_server.objects(bucket, f"artifacts/{tenant}/")) == {
        f"artifacts/{tenant}/datasets/{kept}/data/cat/0.png",
        f"artifacts/{tenant}/imports/{importing}/weights.pt",
    }
