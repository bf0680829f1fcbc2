"""Safe handling of uploaded archives: stream to disk with a byte limit, then extract member by member.

Every member is checked before anything is written: no absolute names, no ``..``, no links (symbolic or
hard), no devices or fifos, a bounded member count and a bounded total size (counted on the bytes
actually written, so a lying zip header does not help). Each target path is resolved and must stay in
the dataset's folder. On any rejection the caller removes the partial folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from fastapi import UploadFile

CHUNK = 1 << 20


class UploadRejected(Exception):
    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


async def save_upload(upload: UploadFile, folder: Path, max_bytes: int) -> tuple[Path, str, int]:
    """Stream ``upload`` into a temp file in ``folder``; 413 past ``max_bytes``. Returns (path, sha256, size)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(prefix="upload-", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadRejected(f"the upload is larger than the limit of {max_bytes} bytes", 413)
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest(), size


def _check_name(name: str) -> PurePosixPath:
    if not name or "\x00" in name:
        raise UploadRejected(f"archive member {name!r} has an empty or invalid name")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise UploadRejected(f"archive member {name!r} has an absolute path")
    parts = PurePosixPath(normalized).parts
    if ".." in parts:
        raise UploadRejected(f"archive member {name!r} leaves the archive's folder ('..')")
    clean = PurePosixPath(*[p for p in parts if p not in ("", ".")]) if parts else PurePosixPath()
    return clean


def _target(dest: Path, relative: PurePosixPath, name: str) -> Path:
    target = (dest / relative).resolve()
    if not target.is_relative_to(dest):
        raise UploadRejected(f"archive member {name!r} would be written outside the dataset folder")
    return target


def _copy(source, target: Path, budget: list[int], max_unpacked: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            budget[0] += len(chunk)
            if budget[0] > max_unpacked:
                raise UploadRejected(f"the archive unpacks to more than the limit of {max_unpacked} bytes", 413)
            out.write(chunk)


def extract_archive(archive: Path, dest: Path, max_members: int, max_unpacked: int) -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) ``archive`` into ``dest`` (created, must be empty)."""
    dest.mkdir(parents=True, exist_ok=False)
    dest = dest.resolve()
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, max_members, max_unpacked)
    elif _is_tar(archive):
        _extract_tar(archive, dest, max_members, max_unpacked)
    else:
        raise UploadRejected("the upload is neither a zip nor a tar archive", 415)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError):
        return False


def _extract_zip(archive: Path, dest: Path, max_members: int, max_unpacked: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise UploadRejected(f"the archive has {len(infos)} members, more than the limit of {max_members}", 413)
            declared = sum(i.file_size for i in infos)
            if declared > max_unpacked:
                raise UploadRejected(
                    f"the archive unpacks to {declared} bytes, more than the limit of {max_unpacked}", 413
                )
            plan = []
            for info in infos:
                relative = _check_name(info.filename)
                mode = info.external_attr >> 16
                if info.create_system == 3 and mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                    raise UploadRejected(f"archive member {info.filename!r} is {kind}")
                plan.append((info, relative, _target(dest, relative, info.filename)))
            budget = [0]
            for info, relative, target in plan:
                if info.is_dir() or not relative.parts:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                with zf.open(info) as source:
                    _copy(source, target, budget, max_unpacked)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
    ) as exc:
        raise UploadRejected(f"the zip archive cannot be read: {exc}") from None


def _extract_tar(archive: Path, dest: Path, max_members: int, max_unpacked: int) -> None:
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = []
            declared = 0
            for member in tf:  # streamed: stop early on a huge member count
                members.append(member)
                if len(members) > max_members:
                    raise UploadRejected(f"the archive has more than the limit of {max_members} members", 413)
                declared += max(member.size, 0)
                if declared > max_unpacked:
                    raise UploadRejected(f"the archive unpacks to more than the limit of {max_unpacked} bytes", 413)
            plan = []
            for member in members:
                relative = _check_name(member.name)
                if member.issym() or member.islnk():
                    raise UploadRejected(
                        f"archive member {member.name!r} is a {'symbolic' if member.issym() else 'hard'} link"
                    )
                if not (member.isfile() or member.isdir()):
                    raise UploadRejected(f"archive member {member.name!r} is a device, fifo or other special file")
                plan.append((member, relative, _target(dest, relative, member.name)))
            budget = [0]
            for member, relative, target in plan:
                if member.isdir() or not relative.parts:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                source = tf.extractfile(member)
                if source is None:
                    raise UploadRejected(f"archive member {member.name!r} cannot be read")
                with source:
                    _copy(source, target, budget, max_unpacked)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, UploadRejected):
            raise
        raise UploadRejected(f"the tar archive cannot be read: {exc}") from None


def dataset_root_in(dest: Path) -> Path:
    """The folder holding the data: ``dest``, or its one top-level folder when the archive wrapped everything in one."""
    visible = [p for p in dest.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if (
        len(visible) == 1
        and visible[0].is_dir()
        and not visible[0].is_symlink()
        and visible[0].name.lower() not in ("train", "val", "valid", "validation", "test")
    ):
        inner = visible[0]
        if any(p.is_dir() for p in inner.iterdir()):
            return inner
    return dest


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
