"""Safe handling of uploaded archives: stream to disk with a byte limit, then extract member by member.

Every member is checked before anything is written: no absolute names, no ``..``, no links (symbolic or
hard), no devices or fifos, a bounded member count, a bounded total size and a bounded compression ratio
(zip bombs), all on the sizes the archive declares; the bytes actually written are counted again while
extracting, so a lying header does not help. Each target path is resolved and must stay in the dataset's
folder. On any rejection the caller removes the partial folder.

Also here: the tenant's storage quota (``tenant_quota``: what the artifact store holds for it), the per-process limit
on concurrent extractions (``ExtractionSlots``), and a full disk (``ENOSPC``/``EDQUOT``) turned into
``StorageFull`` with the upload's temp file removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import UploadFile

from layercut.artifacts import ArtifactStore
from layercut.contracts.errors import StorageFull, disk_full

CHUNK = 1 << 20
RATIO_FLOOR = 1 << 20
"""Members and archives that unpack to less than this are never refused for their compression ratio."""
DEFAULT_MAX_RATIO = 200.0
EXTRACTION_RETRY_AFTER = 5
"""Seconds a client refused an extraction slot is told to wait (Retry-After)."""


class UploadRejected(Exception):
    def __init__(self, message: str, status_code: int = 422, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers


def human_bytes(n: float) -> str:
    """``n`` bytes for a person: "512 bytes", "1.5 MiB", "2.0 GiB"."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


# --- the tenant's storage quota -------------------------------------------------------------------


@dataclass(frozen=True)
class Quota:
    """A tenant's storage quota as it stood before this upload: ``limit`` bytes, ``used`` of them."""

    limit: int
    used: int

    @property
    def left(self) -> int:
        return max(self.limit - self.used, 0)

    def check(self, adding: int) -> None:
        """Refuse (507) when ``adding`` more bytes would take the tenant past its quota."""
        if adding > self.left:
            raise self.refusal(adding)

    def refusal(self, adding: int) -> UploadRejected:
        return UploadRejected(
            f"storage quota exceeded: this tenant may keep {human_bytes(self.limit)} ({self.limit} bytes, "
            f"LAYERCUT_TENANT_QUOTA_BYTES) on the artifact volume and uses {human_bytes(self.used)} ({self.used} "
            f"bytes); this upload needs {human_bytes(adding)} more. Delete datasets (DELETE /v1/datasets/{{id}}), "
            "imported models (DELETE /v1/models/{id}) or finished jobs and pipelines (DELETE /v1/jobs/{id}, "
            "DELETE /v1/pipelines/{id}) you no longer need, or ask the operator to raise the quota",
            507,
        )


def tenant_quota(store: ArtifactStore, tenant: str, limit: int) -> Quota | None:
    """The quota of ``tenant`` (its datasets, imports and job artifacts, as the artifact store holds them), with
    what it uses now; None when ``limit`` is 0 (no quota, nothing counted)."""
    if limit <= 0:
        return None
    return Quota(limit, store.usage(tenant))


# --- concurrent extractions -----------------------------------------------------------------------


class ExtractionSlots:
    """At most ``size`` uploads saved and extracted at once in this process; one more polls for a free slot for up
    to ``wait`` seconds, then is refused (503 with Retry-After). A plain lock, not an asyncio one: it works whatever
    event loop the request runs on, and is released however the request ends."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.BoundedSemaphore(size)

    @asynccontextmanager
    async def taken(self, wait: float) -> AsyncIterator[None]:
        deadline = time.monotonic() + wait
        while not self._free.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise UploadRejected(
                    f"this server is already extracting {self.size} uploads (LAYERCUT_UPLOAD_MAX_CONCURRENT_"
                    f"EXTRACTIONS); retry in {EXTRACTION_RETRY_AFTER} seconds",
                    503,
                    {"Retry-After": str(EXTRACTION_RETRY_AFTER)},
                )
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            self._free.release()


def extraction_slots(state: Any, size: int) -> ExtractionSlots:
    """The extraction slots of the app whose ``state`` is given (one set per API process), made on first use."""
    slots = getattr(state, "extraction_slots", None)
    if not isinstance(slots, ExtractionSlots) or slots.size != size:
        slots = ExtractionSlots(size)
        state.extraction_slots = slots
    return slots


# --- saving and extracting ------------------------------------------------------------------------


async def save_upload(
    upload: UploadFile, folder: Path, max_bytes: int, quota: Quota | None = None
) -> tuple[Path, str, int]:
    """Stream ``upload`` into a temp file in ``folder``; 413 past ``max_bytes``, 507 past the tenant's ``quota``,
    ``StorageFull`` when the disk is full (the temp file removed in every case). Returns (path, sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", dir=folder)
    except OSError as exc:
        if disk_full(exc):
            raise StorageFull() from None
        raise
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadRejected(f"the upload is larger than the limit of {max_bytes} bytes", 413)
                if quota is not None:
                    quota.check(size)
                digest.update(chunk)
                out.write(chunk)
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if disk_full(exc):
            raise StorageFull() from None
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


def _too_big(unpacked: int | None, max_unpacked: int) -> UploadRejected:
    size = f"to {unpacked} bytes ({human_bytes(unpacked)})" if unpacked is not None else "to more bytes"
    return UploadRejected(
        f"the archive unpacks {size}, more than the limit of {max_unpacked} bytes ({human_bytes(max_unpacked)}, "
        "LAYERCUT_UPLOAD_MAX_UNPACKED_BYTES): upload a smaller dataset, or ask the operator to raise the limit",
        413,
    )


def _bomb(what: str, unpacked: int, packed: int, max_ratio: float) -> UploadRejected:
    return UploadRejected(
        f"{what} unpacks to {human_bytes(unpacked)} from {human_bytes(packed)} ({unpacked / max(packed, 1):.0f}:1), "
        f"more than the {max_ratio:g}:1 this server accepts (LAYERCUT_UPLOAD_MAX_RATIO): it looks like a zip bomb, "
        "so nothing was extracted. Images barely compress: pack the dataset's image files as they are (no padding, "
        "no sparse or repeated data), or ask the operator to raise the limit",
        413,
    )


@dataclass(frozen=True)
class _Limits:
    max_members: int
    max_unpacked: int
    max_ratio: float
    quota: Quota | None
    packed: int

    def check_declared(self, declared: int) -> None:
        """The archive's declared unpacked total against the limit, the whole archive's ratio and the quota."""
        if declared > self.max_unpacked:
            raise _too_big(declared, self.max_unpacked)
        if declared >= RATIO_FLOOR and declared > self.max_ratio * max(self.packed, 1):
            raise _bomb("the archive", declared, self.packed, self.max_ratio)
        if self.quota is not None:
            self.quota.check(declared)


def _copy(source, target: Path, budget: list[int], limits: _Limits) -> None:
    """Copy one member, counting the bytes really written against the limit and the quota (headers can lie)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            budget[0] += len(chunk)
            if budget[0] > limits.max_unpacked:
                raise _too_big(None, limits.max_unpacked)
            if limits.quota is not None:
                limits.quota.check(budget[0])
            out.write(chunk)


def extract_archive(
    archive: Path,
    dest: Path,
    max_members: int,
    max_unpacked: int,
    max_ratio: float = DEFAULT_MAX_RATIO,
    quota: Quota | None = None,
) -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) ``archive`` into ``dest`` (created, must be empty).

    Refused before anything is written (``UploadRejected``): too many members, a declared unpacked total over
    ``max_unpacked`` or over what ``quota`` leaves, a zip member or the whole archive (of 1 MiB or more unpacked)
    compressed more than ``max_ratio``:1. While writing, the bytes are counted again. A full disk raises
    ``StorageFull``; the caller removes ``dest`` whatever went wrong."""
    try:
        dest.mkdir(parents=True, exist_ok=False)
        limits = _Limits(max_members, max_unpacked, max_ratio, quota, archive.stat().st_size)
    except OSError as exc:
        if disk_full(exc):
            raise StorageFull() from None
        raise
    dest = dest.resolve()
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, limits)
    elif _is_tar(archive):
        _extract_tar(archive, dest, limits)
    else:
        raise UploadRejected("the upload is neither a zip nor a tar archive", 415)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError):
        return False


def _extract_zip(archive: Path, dest: Path, limits: _Limits) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_members:
                raise UploadRejected(
                    f"the archive has {len(infos)} members, more than the limit of {limits.max_members}", 413
                )
            limits.check_declared(sum(max(i.file_size, 0) for i in infos))
            for info in infos:
                if info.file_size >= RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                    raise _bomb(
                        f"archive member {info.filename!r}", info.file_size, info.compress_size, limits.max_ratio
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
                    _copy(source, target, budget, limits)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
    ) as exc:
        if disk_full(exc):
            raise StorageFull() from None
        raise UploadRejected(f"the zip archive cannot be read: {exc}") from None


def _extract_tar(archive: Path, dest: Path, limits: _Limits) -> None:
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = []
            declared = 0
            for member in tf:  # streamed: stop early on a huge member count, size or ratio
                members.append(member)
                if len(members) > limits.max_members:
                    raise UploadRejected(f"the archive has more than the limit of {limits.max_members} members", 413)
                declared += max(member.size, 0)
                limits.check_declared(declared)
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
                    _copy(source, target, budget, limits)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, UploadRejected):
            raise
        if disk_full(exc):
            raise StorageFull() from None
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
