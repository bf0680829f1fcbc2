"""Dataset uploads: good archives scanned; every attack refused with nothing written anywhere."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from layercut.testing.api_env import make_env

PNG = b"\x89PNG\r\n\x1a\nfake"


def zip_bytes(members: list[tuple[str, bytes]], symlink: tuple[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink[0])
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, symlink[1])
    return buffer.getvalue()


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tf.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


GOOD = [
    ("data/train/cat/1.png", PNG),
    ("data/train/cat/2.png", PNG),
    ("data/train/dog/1.png", PNG),
    ("data/val/cat/1.png", PNG),
    ("data/val/dog/1.png", PNG),
    ("data/.hidden", b"x"),
]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def upload(env, data: bytes, filename: str = "d.zip", headers: dict | None = None):
    return env.client.post("/v1/datasets/upload", files={"file": (filename, data)}, headers=headers or env.headers)


@pytest.mark.parametrize("fmt", ["zip", "tar.gz", "tar"])
def test_good_archive_is_extracted_and_scanned(env, fmt):
    data = zip_bytes(GOOD) if fmt == "zip" else tar_bytes(GOOD, "w:gz" if fmt == "tar.gz" else "w")
    response = upload(env, data, f"pets.{fmt}")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "upload" and body["name"] == "pets" and body["classes"] == ["cat", "dog"]
    assert body["counts"] == {"train": {"cat": 2, "dog": 1}, "val": {"cat": 1, "dog": 1}}
    folder = env.settings.resolved_artifact_root / env.tenant / "datasets" / body["id"]
    assert (folder / "data" / "train" / "cat" / "1.png").read_bytes() == PNG
    # the other tenant cannot see it; deleting removes the files
    assert env.client.get(f"/v1/datasets/{body['id']}", headers=env.other_headers).status_code == 404
    assert env.client.delete(f"/v1/datasets/{body['id']}", headers=env.headers).status_code == 204
    assert not folder.exists()


def test_upload_idempotency(env):
    headers = {**env.headers, "Idempotency-Key": "up-1"}
    archive = zip_bytes(
        GOOD
    )  # built once: a zip stamps its members with the time (2 s steps), so two builds can differ
    first, again = upload(env, archive, headers=headers), upload(env, archive, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    other = upload(env, zip_bytes(GOOD + [("data/train/dog/2.png", PNG)]), headers=headers)
    assert other.status_code == 422
    datasets = env.settings.resolved_artifact_root / env.tenant / "datasets"
    assert sorted(p.name for p in datasets.iterdir() if not p.name.startswith(".")) == [first.json()["id"]]


ATTACKS = {
    "zip_slip": lambda tmp: ("a.zip", zip_bytes(GOOD + [("data/../../../../evil.png", PNG)]), 422),
    "zip_absolute": lambda tmp: ("a.zip", zip_bytes(GOOD + [(str(tmp / "evil-abs.png"), PNG)]), 422),
    "zip_symlink": lambda tmp: ("a.zip", zip_bytes(GOOD, symlink=("data/train/cat/link.png", "/etc/passwd")), 422),
    "tar_slip": lambda tmp: ("a.tgz", tar_bytes(GOOD + [("../evil.png", PNG)]), 422),
    "tar_absolute": lambda tmp: ("a.tgz", tar_bytes(GOOD + [(str(tmp / "evil-abs.png"), PNG)]), 422),
    "tar_symlink": lambda tmp: (
        "a.tgz",
        tar_bytes(GOOD + [special("data/train/cat/x.png", tarfile.SYMTYPE, "/etc/passwd")]),
        422,
    ),
    "tar_symlink_then_write": lambda tmp: (
        "a.tgz",
        tar_bytes([special("data/escape", tarfile.SYMTYPE, str(tmp)), ("data/escape/evil.png", PNG)] + GOOD),
        422,
    ),
    "tar_hardlink": lambda tmp: (
        "a.tgz",
        tar_bytes(GOOD + [special("data/train/cat/h.png", tarfile.LNKTYPE, "/etc/passwd")]),
        422,
    ),
    "tar_chardev": lambda tmp: ("a.tgz", tar_bytes(GOOD + [special("data/null", tarfile.CHRTYPE)]), 422),
    "tar_blockdev": lambda tmp: ("a.tgz", tar_bytes(GOOD + [special("data/sda", tarfile.BLKTYPE)]), 422),
    "tar_fifo": lambda tmp: ("a.tgz", tar_bytes(GOOD + [special("data/pipe", tarfile.FIFOTYPE)]), 422),
    "not_an_archive": lambda tmp: ("a.zip", b"hello, I am not an archive", 415),
    "too_many_members": lambda tmp: (
        "a.zip",
        zip_bytes(GOOD + [(f"data/train/dog/{i}.png", PNG) for i in range(30)]),
        413,
    ),
    "too_many_unpacked_bytes": lambda tmp: (
        "a.zip",
        zip_bytes(GOOD + [("data/train/dog/big.png", b"0" * 50_000)]),
        413,
    ),
    "tar_too_many_unpacked_bytes": lambda tmp: (
        "a.tgz",
        tar_bytes(GOOD + [("data/train/dog/big.png", b"0" * 50_000)]),
        413,
    ),
    "too_large_upload": lambda tmp: (
        "a.zip",
        zip_bytes(GOOD + [("data/train/dog/r.png", bytes(range(256)) * 400)]),
        413,
    ),
    "single_class": lambda tmp: ("a.zip", zip_bytes([("d/cat/1.png", PNG), ("d/cat/2.png", PNG)]), 422),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_upload_attacks_are_refused_with_nothing_written(postgres_url, tmp_path, attack):
    env = make_env(
        postgres_url, tmp_path, upload_max_members=20, upload_max_unpacked_bytes=20_000, upload_max_bytes=60_000
    )
    filename, data, expected = ATTACKS[attack](tmp_path)
    before = files_under(tmp_path)
    response = upload(env, data, filename)
    assert response.status_code == expected, response.text
    assert files_under(tmp_path) == before, "the refused upload left files behind"
    datasets = env.settings.resolved_artifact_root / env.tenant / "datasets"
    assert [p.name for p in datasets.iterdir() if p.name != ".incoming"] == []
    assert not (Path("/evil.png").exists() or (tmp_path.parent / "evil.png").exists())
    if expected == 422:
        assert response.json()["detail"][0]["loc"] == ["body", "file"]
    assert env.client.get("/v1/datasets", headers=env.headers).json()["items"] == []


def test_the_reaper_removes_what_an_interrupted_upload_or_import_left(env):
    """An API killed mid-extraction leaves a partial folder and its archive with no row; an import killed before
    its job was written leaves its upload: once older than orphan_after_seconds, the reaper's sweep removes them,
    and nothing that a row still names."""
    import os
    import time
    import uuid

    from layercut.jobs.retention import remove_orphans

    kept = upload(env, zip_bytes(GOOD), "pets.zip").json()["id"]
    tenant = env.settings.resolved_artifact_root / env.tenant
    old = time.time() - 2 * env.settings.orphan_after_seconds
    partial = tenant / "datasets" / str(uuid.uuid4())
    (partial / "data" / "cat").mkdir(parents=True)
    (partial / "data" / "cat" / "1.png").write_bytes(PNG)
    archive = tenant / "datasets" / ".incoming" / "upload-abc"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(b"half an archive")
    stray_import = tenant / "imports" / str(uuid.uuid4())
    stray_import.mkdir(parents=True)
    (stray_import / "weights.pt").write_bytes(b"PK\x03\x04")
    fresh = tenant / "imports" / ".incoming" / "upload-still-arriving"
    fresh.parent.mkdir(parents=True, exist_ok=True)
    fresh.write_bytes(b"bytes")
    for path in (partial, archive, stray_import, tenant / "datasets" / kept):
        os.utime(path, (old, old))

    assert remove_orphans(env.settings, force=True) == {"files": 1, "folders": 2}
    assert not partial.exists() and not archive.exists() and not stray_import.exists()
    assert fresh.exists()  # still arriving: younger than the limit
    assert (tenant / "datasets" / kept / "data" / "train" / "cat" / "1.png").is_file()  # its row names it
    assert env.client.get(f"/v1/datasets/{kept}", headers=env.headers).status_code == 200
