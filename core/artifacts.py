"""Where a job's files live: the artifact volume (the embedded default), or S3-compatible object storage
(``LAYERCUT_ARTIFACT_URL=s3://bucket/prefix``) so that workers and API processes on different machines share them.

Both stores name a file by its key, the path relative to the artifact root that the database rows hold
(``<tenant>/<job id>/model.safetensors``). Each machine works on local files under ``artifact_root``: with the
volume, that folder is the store itself; with object storage, it is this machine's cache. A worker fetches the
inputs its job reads (checked against the size and SHA-256 the database recorded), writes its outputs there and
publishes them before the job succeeds; the API streams downloads from the store and fetches the small files a
report shows. Nothing else in the house needs to know which store is configured.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import mimetypes
import os
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from layercut.contracts.errors import LayercutError, MissingResourceError
from layercut.settings import Settings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Downloads are streamed in blocks of this many bytes."""
TRANSFER_THREADS = 8
"""Files of one folder are published or fetched this many at a time."""
MAX_WALK_ENTRIES = 2_000_000
"""A walk of the volume for a tenant's usage stops after this many files and folders."""
PARTIAL_SUFFIXES = (".tmp", ".partial", ".part")
"""Files still being written, never published."""
IN_USE_FOLDER = ".in-use"
"""In a machine's cache: one file per process running a job, listing the keys that job holds."""
TRIM_MIN_AGE_SECONDS = 60.0
"""A cached file used this recently is never trimmed (a request may be reading what it just fetched)."""


class ArtifactStoreError(LayercutError):
    """The object store refused or could not be reached (after the client's own retries)."""

    code = "artifact_store_unavailable"


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_bytes(folder: Path, max_entries: int = MAX_WALK_ENTRIES) -> int:
    """Bytes of the regular files under ``folder`` (links not followed; 0 when it does not exist). The walk stops
    after ``max_entries`` files and folders and returns what it counted by then."""
    total, seen, pending = 0, 0, [folder]
    while pending and seen < max_entries:
        try:
            scanner = os.scandir(pending.pop())
        except OSError:  # gone meanwhile, or not a folder
            continue
        with scanner:
            for entry in scanner:
                seen += 1
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                if seen >= max_entries:
                    break
    return total


def check_key(key: str) -> str:
    """A key as the rows hold it: relative, POSIX, without ``..`` or empty parts (never a request's text)."""
    parts = key.split("/")
    if "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not an artifact key: {key!r}")
    return key


@dataclass(frozen=True)
class StoredObject:
    """A file opened for download: its size and its bytes in blocks (closed when the blocks are used up)."""

    size: int
    blocks: Iterator[bytes]


class ArtifactStore(ABC):
    """The files of jobs, datasets and imports, by key; ``root`` is where this machine holds them."""

    remote: bool = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """The local path of ``key`` (whether or not the file is here)."""
        return self.root / check_key(key)

    def key(self, path: Path) -> str:
        """The key of a local path under the root."""
        return path.resolve().relative_to(self.root).as_posix()

    @abstractmethod
    def local(self, key: str, *, size: int | None = None, sha256: str | None = None) -> Path:
        """The file ``key`` on this machine, fetched if needed; with ``size``/``sha256`` (as the database recorded
        them) a cached copy that differs is fetched again and a fetched one that differs is refused."""

    @abstractmethod
    def local_tree(self, prefix: str) -> Path:
        """The folder ``prefix`` on this machine, with every file stored under it."""

    @abstractmethod
    def newest(self, key: str) -> Path | None:
        """A file that grows (a job's log): its newest stored copy on this machine, None if there is none."""

    @abstractmethod
    def publish(self, folder: Path) -> None:
        """Make the files under ``folder`` (below the root) the stored ones: stored objects under it that are no
        longer there are removed, so an earlier attempt leaves nothing behind."""

    @abstractmethod
    def publish_file(self, path: Path) -> None:
        """Store one local file under its key."""

    @abstractmethod
    def open(self, key: str) -> StoredObject:
        """``key``'s bytes for a download (MissingResourceError when it is not stored)."""

    @abstractmethod
    def delete_tree(self, prefix: str) -> None:
        """Remove every file under ``prefix``, stored and local."""

    @abstractmethod
    def delete_file(self, key: str) -> None:
        """Remove one file, stored and local."""

    @abstractmethod
    def usage(self, prefix: str) -> int:
        """Bytes stored under ``prefix`` (a tenant's quota)."""

    def presigned_url(self, key: str, filename: str, seconds: int) -> str | None:
        """A URL that downloads ``key`` straight from the store for ``seconds`` (None: the store cannot give one)."""
        return None

    @abstractmethod
    def folders(self, prefix: str) -> dict[str, float]:
        """The folders right under ``prefix`` ("" for the top), each with when it last changed (epoch seconds):
        what the orphan sweep judges by."""

    def release(self, path: Path) -> None:
        """Drop the local copy of a published file or folder when the store is elsewhere (the API keeps no
        uploads); a no-op on the volume."""
        return None

    def describe(self) -> str:
        """Where the files live, for logs and ``/readyz`` (no credentials)."""
        return "the artifact volume"

    @abstractmethod
    def check(self) -> None:
        """Raise when the store cannot be used now (readiness)."""

    @contextmanager
    def holding(self, *keys: str) -> Iterator[None]:
        """While a job of this process runs: the files and folders it uses (``keys``, and whatever it fetches) are
        kept by every cache trim on this machine. A no-op on the volume, which is not a cache."""
        yield

    def trim(self, max_bytes: int) -> int:
        """Remove least recently used cached files until at most ``max_bytes`` remain; returns the bytes removed.
        A no-op on the volume."""
        return 0


class VolumeStore(ArtifactStore):
    """The artifact volume: the root folder is the store, shared by every process that mounts it."""

    def local(self, key: str, *, size: int | None = None, sha256: str | None = None) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise MissingResourceError(f"{key} is missing on the artifact volume")
        return path

    def local_tree(self, prefix: str) -> Path:
        path = self.path(prefix)
        if not path.is_dir():
            raise MissingResourceError(f"{prefix} is missing on the artifact volume")
        return path

    def newest(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.is_file() else None

    def publish(self, folder: Path) -> None:
        return None

    def publish_file(self, path: Path) -> None:
        return None

    def open(self, key: str) -> StoredObject:
        path = self.local(key)
        handle = path.open("rb")

        def blocks() -> Iterator[bytes]:
            with handle:
                yield from iter(lambda: handle.read(CHUNK_BYTES), b"")

        return StoredObject(os.fstat(handle.fileno()).st_size, blocks())

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def delete_file(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def usage(self, prefix: str) -> int:
        return folder_bytes(self.path(prefix))

    def folders(self, prefix: str) -> dict[str, float]:
        folder = self.path(prefix) if prefix else self.root
        try:
            entries = list(folder.iterdir())
        except OSError:  # not there (yet)
            return {}
        found = {}
        for entry in entries:
            try:
                if entry.is_dir() and not entry.is_symlink():
                    found[entry.name] = entry.lstat().st_mtime
            except OSError:
                continue
        return found

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ArtifactStoreError("the artifact volume is not writable by this process")


class ObjectStore(ArtifactStore):
    """S3-compatible object storage (AWS S3, MinIO, Ceph, moto's server …) with this machine's cache at the root.

    Keys are stored under ``s3://bucket/prefix/``. A fetched file is written beside its place and renamed, so a
    reader never sees half a file; concurrent fetches of the same file by two processes both end with it whole.
    """

    remote = True

    def __init__(self, root: Path, url: str, client_factory: Callable[[], Any]) -> None:
        super().__init__(root)
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = url
        self._client_factory = client_factory
        self._clients: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._held: dict[int, set[str]] = {}  # per thread running a job: the keys it holds

    @property
    def client(self) -> Any:
        """One boto3 client per process (a forked worker child makes its own: connection pools do not survive
        a fork)."""
        pid = os.getpid()
        with self._lock:
            if pid not in self._clients:
                self._clients = {pid: self._client_factory()}
            return self._clients[pid]

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def describe(self) -> str:
        return f"object storage s3://{self.bucket}/{self.prefix}"

    # --- the cache -----------------------------------------------------------------------------------
    @contextmanager
    def holding(self, *keys: str) -> Iterator[None]:
        thread = threading.get_ident()
        with self._lock:
            self._held[thread] = {check_key(k) for k in keys}
            self._write_held()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(thread, None)
                self._write_held()

    def _hold(self, key: str) -> None:
        with self._lock:
            held = self._held.get(threading.get_ident())
            if held is not None and key not in held:
                held.add(key)
                self._write_held()

    def _held_file(self, pid: int) -> Path:
        return self.root / IN_USE_FOLDER / f"{pid}.json"

    def _write_held(self) -> None:
        """This process's held keys, in a file every process of this machine reads before trimming."""
        path = self._held_file(os.getpid())
        if not self._held:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.part")
        partial.write_text(json.dumps(sorted(set().union(*self._held.values()))))
        partial.replace(path)

    def _held_here(self) -> set[str]:
        """The keys held by the live processes of this machine (the files of processes gone are removed)."""
        held: set[str] = set()
        for path in (self.root / IN_USE_FOLDER).glob("*.json"):
            try:
                pid = int(path.stem)
                os.kill(pid, 0)
            except ProcessLookupError:
                path.unlink(missing_ok=True)
                continue
            except (ValueError, PermissionError):
                pass  # not ours to judge: kept
            try:
                held.update(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return held

    def trim(self, max_bytes: int) -> int:
        if max_bytes <= 0:
            return 0
        files: list[tuple[float, int, Path]] = []
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = [d for d in dirs if d != IN_USE_FOLDER]
            for name in names:
                path = Path(folder, name)
                try:
                    stat = path.lstat()
                except OSError:
                    continue
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        if total <= max_bytes:
            return 0
        held = self._held_here()
        recent = time.time() - TRIM_MIN_AGE_SECONDS
        removed = 0
        for mtime, size, path in sorted(files):
            if total <= max_bytes or mtime > recent:
                break
            key = path.relative_to(self.root).as_posix()
            if any(key == h or key.startswith(h + "/") for h in held):
                continue
            path.unlink(missing_ok=True)
            total, removed = total - size, removed + size
            _remove_empty_folders(path.parent, self.root)
        return removed

    # --- reading -----------------------------------------------------------------------------------
    def local(self, key: str, *, size: int | None = None, sha256: str | None = None) -> Path:
        path = self.path(key)
        self._hold(key)
        if size is None and sha256 is None:
            size = self._head(key)["ContentLength"]
        if path.is_file() and _matches(path, size, sha256):
            path.touch()  # recently used: what a cache trim keeps
            return path
        self._download(key, path, size, sha256)
        return path

    def local_tree(self, prefix: str) -> Path:
        folder = self.path(prefix)
        self._hold(prefix)
        listed = list(self._list(prefix))
        if not listed:
            raise MissingResourceError(f"{prefix} is not in the artifact store")
        stale = [(k, n) for k, n in listed if not (self.path(k).is_file() and self.path(k).stat().st_size == n)]
        self._parallel(lambda item: self._download(item[0], self.path(item[0]), item[1], None), stale)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def newest(self, key: str) -> Path | None:
        try:
            size = self._head(key)["ContentLength"]
        except MissingResourceError:
            return None
        path = self.path(key)
        if not (path.is_file() and path.stat().st_size == size):
            self._download(key, path, size, None)
        return path

    def open(self, key: str) -> StoredObject:
        response = self._call("get_object", key, Bucket=self.bucket, Key=self.object_key(key))
        body = response["Body"]

        def blocks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK_BYTES)
            finally:
                body.close()

        return StoredObject(int(response["ContentLength"]), blocks())

    def presigned_url(self, key: str, filename: str, seconds: int) -> str | None:
        self._head(key)  # a missing object is a 404 here, not at the client's GET
        url: str = self._call(
            "generate_presigned_url",
            key,
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.object_key(key),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=seconds,
        )
        return url

    def usage(self, prefix: str) -> int:
        """Bytes of the first ``MAX_WALK_ENTRIES`` objects under ``prefix`` (the volume's walk has the same bound)."""
        return sum(size for _, size in itertools.islice(self._list(prefix), MAX_WALK_ENTRIES))

    def check(self) -> None:
        self._call("head_bucket", f"the bucket {self.bucket}", Bucket=self.bucket)

    def folders(self, prefix: str) -> dict[str, float]:
        """Each folder's time is its newest object's among the first thousand (uploads are written at once)."""
        base = self.object_key(prefix).rstrip("/") + "/" if prefix else self.prefix
        paginator = self._call("get_paginator", prefix or "/", "list_objects_v2")
        found: dict[str, float] = {}
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(base) :].rstrip("/")
                    listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=common["Prefix"], MaxKeys=1000)
                    times = [item["LastModified"].timestamp() for item in listed.get("Contents", [])]
                    if times:
                        found[name] = max(times)
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactStoreError(
                f"the artifact store could not list {prefix or 'its top'}: {type(exc).__name__}"
            ) from None
        return found

    # --- writing -----------------------------------------------------------------------------------
    def publish(self, folder: Path) -> None:
        files = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(PARTIAL_SUFFIXES)]
        self._parallel(self.publish_file, files)
        kept = {self.key(p) for p in files}
        gone = [k for k, _ in self._list(self.key(folder)) if k not in kept]
        self._delete_keys(gone)

    def publish_file(self, path: Path) -> None:
        key = self.key(path)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._call(
            "upload_file",
            key,
            str(path),
            self.bucket,
            self.object_key(key),
            ExtraArgs={"ContentType": content_type},
        )

    def delete_tree(self, prefix: str) -> None:
        self._delete_keys([k for k, _ in self._list(prefix)])
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def delete_file(self, key: str) -> None:
        self._call("delete_object", key, Bucket=self.bucket, Key=self.object_key(key))
        self.path(key).unlink(missing_ok=True)

    def release(self, path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    # --- the S3 calls --------------------------------------------------------------------------------
    def _call(self, operation: str, key: str, *args: Any, **kwargs: Any) -> Any:
        """One client call; a missing object is a MissingResourceError, any other failure an ArtifactStoreError
        that names the key and S3's error code, never the endpoint or credentials."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(*args, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise MissingResourceError(f"{key} is not in the artifact store") from None
            raise ArtifactStoreError(f"the artifact store refused {operation} of {key}: {code or exc}") from None
        except BotoCoreError as exc:
            raise ArtifactStoreError(
                f"the artifact store could not be reached for {operation} of {key}: {type(exc).__name__}"
            ) from None

    def _head(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("head_object", key, Bucket=self.bucket, Key=self.object_key(key))
        return result

    def _download(self, key: str, path: Path, size: int | None, sha256: str | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            self._call("download_file", key, self.bucket, self.object_key(key), str(partial))
            if not _matches(partial, size, sha256):
                raise ArtifactStoreError(
                    f"{key} as stored does not match what the database recorded for it "
                    f"({'SHA-256' if sha256 else 'size'} differs): it was changed or damaged in the store"
                )
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)

    def _list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under the folder ``prefix``."""
        folder = self.object_key(prefix).rstrip("/") + "/"
        pages = self._call("get_paginator", prefix, "list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :], int(item["Size"])
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactStoreError(f"the artifact store could not list {prefix}: {type(exc).__name__}") from None

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # S3's DeleteObjects takes 1,000 keys at a time
            batch = [{"Key": self.object_key(k)} for k in keys[start : start + 1000]]
            self._call("delete_objects", keys[start], Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def _parallel(self, action: Callable[[Any], None], items: Iterable[Any]) -> None:
        items = list(items)
        if len(items) <= 1:
            for item in items:
                action(item)
            return
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            for _ in pool.map(action, items):
                pass


def _remove_empty_folders(folder: Path, root: Path) -> None:
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone
            return
        folder = folder.parent


def _matches(path: Path, size: int | None, sha256: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or file_sha256(path) == sha256


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (bucket, ``some/prefix/``); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise ValueError(f"the artifact URL must look like s3://bucket/prefix, not {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"the artifact URL {url!r} names no bucket (s3://bucket/prefix)")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store ``settings`` configure: object storage when ``artifact_url`` is set, else the volume (one per
    process and configuration)."""
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    return _store(
        settings.resolved_artifact_root,
        settings.artifact_url,
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_access_key_id,
        secret,
    )


@lru_cache(maxsize=16)
def _store(
    root: Path,
    url: str | None,
    endpoint: str | None,
    region: str | None,
    access_key: str | None,
    secret: str | None,
) -> ArtifactStore:
    if not url:
        return VolumeStore(root)

    def client() -> Any:
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            config=config,
        )

    return ObjectStore(root, url, client)
