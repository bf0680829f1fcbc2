"""A small client for layercut's HTTP API, for other services (httpx only; no torch).

    from layercut.client import LayercutClient

    with LayercutClient("http://127.0.0.1:8000", api_key) as lc:
        data = lc.register_dataset(name="textures", builtin="textures")
        pipeline = lc.submit_pipeline({"data": {"dataset_id": data["id"], "image_size": 32}, "arch": "smallcnn"})
        done = lc.wait(pipeline["id"], timeout=1800)
        compare_step = done["steps"][-1]
        for artifact in lc.list_artifacts(compare_step["id"]):
            lc.download_artifact(artifact, "out/")

Safety of retries: GETs are retried on connection errors and 5xx/429 with capped exponential backoff.
Every POST that creates something carries an ``Idempotency-Key`` (generated once per call when not
given), so the retried POST returns the resource the first attempt created instead of a second one.
Downloads are streamed to a temporary file and verified against the sha256 the API lists before they
are moved into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
RETRY_STATUSES = (429, 500, 502, 503, 504)


def progress_signature(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a job's or a pipeline's record shows of its progress: status, stage and percent, of every step too."""

    def of(item: Mapping[str, Any]) -> tuple[Any, ...]:
        return (item.get("status"), item.get("stage"), item.get("percent"))

    steps = record.get("steps") or []
    return (of(record), *(of(step) for step in steps if isinstance(step, Mapping)))


class LayercutError(Exception):
    """Base class of the client's errors."""


class ApiError(LayercutError):
    """The API answered with an error status (after retries, for retryable ones)."""

    def __init__(self, status_code: int, detail: Any, method: str, url: str) -> None:
        self.status_code, self.detail, self.method, self.url = status_code, detail, method, url
        super().__init__(f"{method} {url} → {status_code}: {_detail_text(detail)}")


class NotFound(ApiError):
    """404: the object does not exist, or belongs to another tenant."""


class JobFailed(LayercutError):
    """A job or pipeline ended ``failed`` or ``cancelled``; ``record`` is its final state."""

    def __init__(self, record: Mapping[str, Any], what: str = "job") -> None:
        self.record = dict(record)
        status = record.get("status")
        error = record.get("error") or {}
        if not isinstance(error, Mapping):
            error = {"message": str(error)}
        code = error.get("code") or record.get("error_code")
        message = error.get("message") or record.get("error_message") or record.get("message")
        reason = f": {code}: {message}" if code or message else ""
        failed_step = _failed_step(record)
        if failed_step:
            reason += f" (step {failed_step})"
        super().__init__(f"{what} {record.get('id')} ended {status}{reason}")


class WaitTimeout(LayercutError, TimeoutError):
    """``wait`` gave up; ``record`` is the last state seen."""

    def __init__(self, record: Mapping[str, Any] | None, what: str, object_id: str, timeout: float) -> None:
        self.record = dict(record) if record else None
        status = record.get("status") if record else "unknown"
        super().__init__(f"{what} {object_id} still {status} after {timeout:g} s")


class ChecksumMismatch(LayercutError):
    """A downloaded file's sha256 differs from the one the API lists (the file is not kept)."""


def _detail_text(detail: Any) -> str:
    if isinstance(detail, Mapping) and "detail" in detail:
        detail = detail["detail"]
    if isinstance(detail, list):  # FastAPI validation errors
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = ".".join(str(x) for x in item.get("loc", ()) if x != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def _failed_step(record: Mapping[str, Any]) -> str | None:
    for step in record.get("jobs") or record.get("steps") or ():
        if isinstance(step, Mapping) and step.get("status") == "failed":
            return f"{step.get('kind', '?')} {step.get('id')}"
    return None


def backoff_delays(
    initial: float = 0.5, factor: float = 2.0, cap: float = 10.0, jitter: float = 0.1
) -> Iterable[float]:
    """initial, initial·factor, … capped at ``cap``, each with ±``jitter`` relative noise (never negative)."""
    delay = initial
    while True:
        yield max(0.0, delay * (1 + random.uniform(-jitter, jitter)))
        delay = min(cap, delay * factor)


class LayercutClient:
    """A synchronous client; safe to share between threads (one httpx connection pool).

    ``transport`` and ``sleep`` exist for tests (``httpx.MockTransport``, a fake clock).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float = 30.0,
        *,
        retries: int = 5,
        backoff: float = 0.5,
        backoff_cap: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        all_headers = {"User-Agent": "layercut-client/0.1", **(headers or {})}
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=all_headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
        )
        self.retries, self.backoff, self.backoff_cap = retries, backoff, backoff_cap
        self._sleep, self._clock = sleep, clock

    # -- plumbing ----------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LayercutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retry_after(self, response: httpx.Response | None, default: float) -> float:
        if response is not None and (value := response.headers.get("Retry-After")):
            try:
                return min(max(float(value), 0.0), self.backoff_cap * 6)
            except ValueError:
                pass
        return default

    def _send(
        self,
        method: str,
        path: str,
        *,
        retry: bool = True,
        stream: bool = False,
        body: Callable[[], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying connection errors and 429/5xx when ``retry``; raise ApiError on errors.

        ``body`` builds fresh keyword arguments per attempt (an upload reopens its file).
        """
        delays = backoff_delays(self.backoff, 2.0, self.backoff_cap)
        attempt = 0
        while True:
            attempt += 1
            extra = body() if body else {}
            try:
                request = self._http.build_request(method, path, **kwargs, **extra)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not retry or attempt > self.retries:
                    raise LayercutError(f"{method} {self._http.base_url}{path}: {type(exc).__name__}: {exc}") from exc
                self._sleep(next(delays))
                continue
            finally:
                for value in extra.values():  # close files opened for this attempt
                    for item in value.values() if isinstance(value, Mapping) else ():
                        handle = item[1] if isinstance(item, tuple) else item
                        if hasattr(handle, "close"):
                            handle.close()
            if response.status_code in RETRY_STATUSES and retry and attempt <= self.retries:
                wait = self._retry_after(response, next(delays))
                response.close()
                self._sleep(wait)
                continue
            if response.status_code >= 400:
                if stream:
                    response.read()
                try:
                    detail = response.json()
                except ValueError:
                    detail = response.text
                response.close()
                cls = NotFound if response.status_code == 404 else ApiError
                raise cls(response.status_code, detail, method, str(request.url))
            return response

    def _get(self, path: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        return self._send("GET", path, params=params or None).json()

    def _post(
        self,
        path: str,
        payload: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        *,
        creates: bool = True,
    ) -> Any:
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())} if creates else {}
        return self._send("POST", path, json=dict(payload or {}), headers=headers).json()

    # -- datasets ----------------------------------------------------------------------------------

    def register_dataset(
        self,
        name: str,
        *,
        builtin: str | None = None,
        folder: str | os.PathLike | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Register a built-in dataset (``builtin="textures"``) or a server-side folder (under your tenant's folder
        of one of the server's LAYERCUT_DATASET_ROOTS, ``<root>/<tenant>/…``). Returns the dataset (id, classes,
        counts per split)."""
        if (builtin is None) == (folder is None):
            raise ValueError("give exactly one of builtin= or folder=")
        payload: dict[str, Any] = {"name": name, **extra}
        if builtin is not None:
            payload.update(kind="builtin", builtin=builtin)
        else:
            payload.update(kind="folder", path=str(folder))
        return self._post("/v1/datasets", payload, idempotency_key)

    def upload_dataset(
        self,
        path_to_archive: str | os.PathLike,
        name: str,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Upload a .zip / .tar(.gz) archive with one folder per class (optionally inside train/ val/ test/)."""
        path = Path(path_to_archive)
        if not path.is_file():
            raise FileNotFoundError(path)
        content_type = "application/zip" if path.suffix.lower() == ".zip" else "application/x-tar"
        key = idempotency_key or str(uuid.uuid4())
        return self._send(
            "POST",
            "/v1/datasets/upload",
            data={"name": name},
            headers={"Idempotency-Key": key},
            body=lambda: {"files": {"file": (path.name, path.open("rb"), content_type)}},
        ).json()

    def list_datasets(self) -> list[dict[str, Any]]:
        return _items(self._get("/v1/datasets"))

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._get(f"/v1/datasets/{dataset_id}")

    # -- jobs and pipelines ------------------------------------------------------------------------

    def submit_job(
        self, params: Mapping[str, Any], callback_url: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``params`` is one job kind's parameters, with ``kind`` (train, analyze, truncate, retrain, compare)."""
        payload: dict[str, Any] = {"params": dict(params)}
        if callback_url:
            payload["callback_url"] = callback_url
        return self._post("/v1/jobs", payload, idempotency_key)

    def submit_pipeline(
        self, spec: Mapping[str, Any], callback_url: str | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """train → analyze → truncate → retrain → compare as linked jobs (``spec`` as POST /v1/pipelines takes it)."""
        payload = dict(spec)
        if callback_url:
            payload["callback_url"] = callback_url
        return self._post("/v1/pipelines", payload, idempotency_key)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._get(f"/v1/jobs/{job_id}")

    def get_pipeline(self, pipeline_id: str) -> dict[str, Any]:
        return self._get(f"/v1/pipelines/{pipeline_id}")

    def list_jobs(self, **filters: Any) -> list[dict[str, Any]]:
        """Every job matching the filters (status, kind, pipeline_id, …), following the cursor."""
        return self._every("/v1/jobs", filters)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._post(f"/v1/jobs/{job_id}/cancel", creates=False)

    def wait(
        self,
        object_id: str,
        timeout: float = 3600.0,
        *,
        poll: float = 0.5,
        poll_cap: float = 10.0,
        kind: str | None = None,
        raise_on_failure: bool = True,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll a job or a pipeline (``kind`` "job" | "pipeline"; by default a job, then a pipeline if no
        job has that id) until it ends, with exponential backoff from ``poll`` to ``poll_cap`` seconds (back to
        ``poll`` whenever something moved).

        ``on_update`` gets the record whenever what it shows changes: the status, the stage or the percent of the
        job, or of any step of the pipeline.

        Returns the final record when it succeeded; raises JobFailed when it failed or was cancelled
        (unless ``raise_on_failure`` is False) and WaitTimeout after ``timeout`` seconds.
        """
        if kind not in (None, "job", "pipeline"):
            raise ValueError("kind is 'job', 'pipeline' or None")
        if kind is None:
            try:
                record, kind = self.get_job(object_id), "job"
            except NotFound:
                record, kind = self.get_pipeline(object_id), "pipeline"
        else:
            record = self.get_job(object_id) if kind == "job" else self.get_pipeline(object_id)
        fetch = self.get_job if kind == "job" else self.get_pipeline
        deadline = self._clock() + timeout
        delays = backoff_delays(poll, 1.6, poll_cap, jitter=0.1)
        shown: tuple[Any, ...] | None = None
        while True:
            now_shown = progress_signature(record)
            if now_shown != shown:
                if on_update:
                    on_update(record)
                if shown is not None:
                    delays = backoff_delays(poll, 1.6, poll_cap, jitter=0.1)  # it moves: look again soon
                shown = now_shown
            if record.get("status") in FINAL_STATUSES:
                if record["status"] != "succeeded" and raise_on_failure:
                    raise JobFailed(record, kind)
                return record
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise WaitTimeout(record, kind, object_id, timeout)
            self._sleep(min(next(delays), remaining))
            record = fetch(object_id)

    # -- results -----------------------------------------------------------------------------------

    def list_artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """The job's files: id, name, kind, bytes, sha256, content_type, download_url."""
        return _items(self._get(f"/v1/jobs/{job_id}/artifacts"))

    def download_artifact(
        self, artifact: str | Mapping[str, Any], dest: str | os.PathLike, sha256: str | None = None
    ) -> Path:
        """Stream an artifact to ``dest`` (a file path, or an existing folder: then the artifact's own file
        name) and verify its sha256 before it is moved into place.

        ``artifact`` is a record from ``list_artifacts`` / a job's ``artifacts`` (its listed sha256 is
        checked) or an artifact id; with a bare id the checksum comes from ``sha256=`` or the download's
        checksum header, and without either the download is refused (ChecksumMismatch).
        """
        if isinstance(artifact, Mapping):
            artifact_id = str(artifact["id"])
            sha256 = sha256 or artifact.get("sha256")
        else:
            artifact_id = str(artifact)
        return self._download(f"/v1/artifacts/{artifact_id}", Path(dest), sha256, require=True)

    def download_checkpoint(self, model_id: str, dest: str | os.PathLike, sha256: str | None = None) -> Path:
        """Stream a model version's checkpoint (.safetensors) to ``dest``; verified against ``sha256`` or the
        download's checksum header when there is one (a model version itself lists no checksum)."""
        return self._download(f"/v1/models/{model_id}/checkpoint", Path(dest), sha256, require=False)

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._get(f"/v1/models/{model_id}")

    def list_models(self, **filters: Any) -> list[dict[str, Any]]:
        """Every model version of the tenant (newest first), following the cursor."""
        return self._every("/v1/models", filters)

    def import_model(
        self,
        weights: str | os.PathLike,
        spec: Mapping[str, Any],
        dataset_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Upload a model trained elsewhere — a ``torch.save``'d state dict (.pt/.pth) or a safetensors file — with its
        spec (architecture, classes in output order, image_size, mean, std). Returns the ``import`` job: wait for it
        (``wait(job["id"])``); its ``result["model_id"]`` is the new model, or it fails naming the keys that do not fit."""
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(path)
        form = {"spec": json.dumps(dict(spec))}
        if dataset_id:
            form["dataset_id"] = str(dataset_id)
        key = idempotency_key or str(uuid.uuid4())
        return self._send(
            "POST",
            "/v1/models/import",
            data=form,
            headers={"Idempotency-Key": key},
            body=lambda: {"files": {"weights": (path.name, path.open("rb"), "application/octet-stream")}},
        ).json()

    def list_pipelines(self, **filters: Any) -> list[dict[str, Any]]:
        """Every pipeline matching the filters (status, label, …), following the cursor."""
        return self._every("/v1/pipelines", filters)

    def cancel_pipeline(self, pipeline_id: str) -> dict[str, Any]:
        return self._post(f"/v1/pipelines/{pipeline_id}/cancel", creates=False)

    def job_report(self, job_id: str, dest: str | os.PathLike | None = None) -> str:
        """A job's HTML report (one self-contained page); also written to ``dest`` when given."""
        return self._report(f"/v1/jobs/{job_id}/report", dest)

    def pipeline_report(self, pipeline_id: str, dest: str | os.PathLike | None = None) -> str:
        """A pipeline's HTML report (the whole run on one page, the steps still running marked); also written to
        ``dest`` when given."""
        return self._report(f"/v1/pipelines/{pipeline_id}/report", dest)

    def _report(self, path: str, dest: str | os.PathLike | None) -> str:
        page = self._send("GET", path).text
        if dest is not None:
            Path(dest).write_text(page, encoding="utf-8")
        return page

    def _every(self, path: str, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every item of a listing, following ``next_cursor``."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self._get(path, **filters, cursor=cursor)
            items.extend(_items(page))
            cursor = page.get("next_cursor") if isinstance(page, Mapping) else None
            if not cursor:
                return items

    def _download(self, path: str, dest: Path, expected: str | None, require: bool) -> Path:
        """Connection errors before the response are retried by _send; a stream cut midway restarts here."""
        delays = backoff_delays(self.backoff, 2.0, self.backoff_cap)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._download_once(path, dest, expected, require)
            except httpx.TransportError as exc:
                if attempt > self.retries:
                    raise LayercutError(f"GET {path}: {type(exc).__name__}: {exc}") from exc
                self._sleep(next(delays))

    def _download_once(self, path: str, dest: Path, expected: str | None, require: bool) -> Path:
        response = self._send("GET", path, stream=True)
        try:
            header_sum = _header_sha256(response.headers)
            want = (expected or header_sum or "").lower() or None
            if dest.is_dir():
                dest = dest / _filename(response.headers, path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
            digest = hashlib.sha256()
            try:
                with partial.open("wb") as fh:
                    for chunk in response.iter_bytes(1 << 20):
                        digest.update(chunk)
                        fh.write(chunk)
                got = digest.hexdigest()
                if want is None and require:
                    raise ChecksumMismatch(
                        f"GET {path}: no sha256 to verify against; pass the artifact record "
                        "from list_artifacts() or sha256="
                    )
                if want is not None and got != want:
                    raise ChecksumMismatch(f"GET {path}: sha256 {got} ≠ the listed {want}; the file was not kept")
                os.replace(partial, dest)
            finally:
                partial.unlink(missing_ok=True)
        finally:
            response.close()
        return dest


def _items(page: Any) -> list[dict[str, Any]]:
    if isinstance(page, list):
        return page
    if isinstance(page, Mapping):
        for key in ("items", "data", "results", "artifacts", "jobs", "datasets", "models"):
            if isinstance(page.get(key), list):
                return page[key]
    raise LayercutError(f"unexpected list response: {str(page)[:200]}")


def _header_sha256(headers: httpx.Headers) -> str | None:
    for name in ("X-Layercut-Sha256", "X-Checksum-Sha256", "X-Content-SHA256"):
        if value := headers.get(name):
            return value.strip().lower()
    etag = headers.get("ETag", "").strip('W/"')
    if re.fullmatch(r"[0-9a-fA-F]{64}", etag):
        return etag.lower()
    return None


def _filename(headers: httpx.Headers, path: str) -> str:
    disposition = headers.get("Content-Disposition", "")
    match = re.search(r"filename\*=UTF-8''([^;]+)", disposition) or re.search(r'filename="?([^";]+)"?', disposition)
    name = match.group(1) if match else path.rstrip("/").rsplit("/", 1)[-1]
    from urllib.parse import unquote

    name = Path(unquote(name)).name  # never a path from the server
    return name if name not in ("", ".", "..") else "download"
