"""What an operator watches: structured logs and Prometheus metrics of the API and the workers.

Logs: one JSON object per line on stderr (``LAYERCUT_LOG_FORMAT=text`` for plain lines), each with the request id,
tenant, job id and pipeline id of the work it belongs to, taken from context variables that the API's request
middleware and the job runner bind (``bound``). A job's own lines also go to a file per job
(``job_log_file``), which ``GET /v1/jobs/{id}/logs`` serves.

Metrics: counters and histograms of prometheus-client. A process that forks workers (Celery's prefork pool,
uvicorn with several processes) sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported, and
``metrics_registry`` then sums every process's files.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # set by the deployment (compose) for processes uvicorn spawns
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402
from prometheus_client import multiprocess as prometheus_multiprocess  # noqa: E402
from pythonjsonlogger.json import JsonFormatter  # noqa: E402

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
"""Read once, when prometheus-client decides too (at import): each process writes its metrics to files there."""

CONTEXT: dict[str, ContextVar[str | None]] = {
    name: ContextVar(name, default=None) for name in ("request_id", "tenant", "job_id", "pipeline_id")
}
"""What every log line carries when it is known: bound by the API's middleware and the job runner."""

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
HANDLER_MARK = "_layercut_handler"

HTTP_REQUESTS = Counter(
    "layercut_http_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "layercut_http_request_duration_seconds",
    "time to answer an HTTP request, by route template and method",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
JOB_SECONDS = Histogram(
    "layercut_job_duration_seconds",
    "wall time of one run of a job, by kind and outcome (succeeded, failed, cancelled)",
    ["kind", "outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600),
)
JOB_FAILURES = Counter("layercut_job_failures_total", "job runs that failed, by kind and error code", ["kind", "code"])
JOB_GPU_PEAK = Gauge(
    "layercut_job_gpu_peak_bytes",
    "the largest GPU memory peak of a job run, by kind (CUDA's max_memory_allocated)",
    ["kind"],
    multiprocess_mode="max",
)


def new_request_id(offered: str | None) -> str:
    """The caller's request id when it is a sane token, else a new one."""
    if offered and REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


@contextmanager
def bound(**values: str | None) -> Iterator[None]:
    """Bind request_id, tenant, job_id and pipeline_id (those given) for the log lines written inside."""
    tokens = [(CONTEXT[name], CONTEXT[name].set(value)) for name, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds the bound context (request id, tenant, job id, pipeline id) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in CONTEXT.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        record.__dict__.pop("color_message", None)  # uvicorn's copy of the message with terminal colours
        return True


def formatter(log_format: str) -> logging.Formatter:
    """One JSON object per line ("json") or a plain line with the ids in brackets ("text")."""
    if log_format == "text":
        return logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [request=%(request_id)s tenant=%(tenant)s job=%(job_id)s "
            "pipeline=%(pipeline_id)s] %(message)s"
        )
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(tenant)s %(job_id)s %(pipeline_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Route every logger of the process (ours, uvicorn's, Celery's) to one stderr handler in ``log_format``;
    calling it again replaces that handler."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, HANDLER_MARK, False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter(log_format))
    handler.setLevel(level.upper())  # the console's level; the root lets INFO through for the job log files
    setattr(handler, HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(min(logging.getLevelName(level.upper()), logging.INFO))
    for name in ("uvicorn", "uvicorn.error", "celery"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")  # the API logs one richer line per answer itself (api/observe.py)
    access.handlers.clear()
    access.propagate = False


class _OneJob(logging.Filter):
    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id

    def filter(self, record: logging.LogRecord) -> bool:
        return CONTEXT["job_id"].get() == self.job_id or getattr(record, "job_id", None) == self.job_id


@contextmanager
def job_log_file(path: Path, job_id: str) -> Iterator[Path]:
    """While inside, the log lines of job ``job_id`` (those written with it bound) are appended to ``path``,
    one JSON object per line, whatever the console's format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.addFilter(_OneJob(job_id))
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter("json"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    if previous > logging.INFO or previous == logging.NOTSET:  # a process that never configured logging
        root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(previous)


LOGS_FOLDER = "logs"
"""Per tenant under the artifact root, beside the job folders: one ``<job id>.log`` per job."""


def job_log_path(artifact_root: Path, tenant: str, job_id: object) -> Path:
    """Where a job's own log lines are kept: beside its artifacts, not among them (the file grows after they are
    recorded)."""
    return artifact_root / tenant / LOGS_FOLDER / f"{job_id}.log"


def metrics_registry() -> CollectorRegistry:
    """The registry a /metrics answer reads: every process's metrics summed when ``PROMETHEUS_MULTIPROC_DIR`` is
    set (forked workers), else this process's."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_SECONDS.labels(route, method).observe(seconds)


def observe_job(kind: str, outcome: str, seconds: float, code: str | None = None, gpu_peak: int | None = None) -> None:
    JOB_SECONDS.labels(kind, outcome).observe(seconds)
    if outcome == "failed":
        JOB_FAILURES.labels(kind, code or "error").inc()
    if gpu_peak:
        JOB_GPU_PEAK.labels(kind).set(gpu_peak)


def log_extra(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: fields that become keys of the JSON line."""
    return {key: value for key, value in fields.items() if value is not None}
