"""The Celery app: ``celery -A layercut.worker.app worker -Q gpu,cpu``. Configured from Settings (LAYERCUT_*).

Celery is transport only: no result backend (Postgres holds job state), late acks so a message whose
worker died is delivered again (the job's compare-and-set claim makes that harmless), prefetch 1.
The reaper runs as the beat task ``layercut.reap`` and, so a lone worker recovers lost jobs without a
beat process, on a timer inside every worker process. Importing this module does not import torch.
"""

from __future__ import annotations

import os
import sys
import tempfile

if "prometheus_client" not in sys.modules:  # before anything imports it: the pool's children write metric files
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="layercut-worker-metrics-"))

import logging  # noqa: E402

from celery import Celery, signals  # noqa: E402

from layercut import telemetry  # noqa: E402
from layercut.contracts.kinds import QUEUES, REAP_TASK, task_name  # noqa: E402
from layercut.jobs.dispatch import broker_transport_options  # noqa: E402
from layercut.jobs.service import start_reaper  # noqa: E402
from layercut.settings import get_settings  # noqa: E402
from layercut.store.db import get_engine  # noqa: E402

log = logging.getLogger(__name__)

settings = get_settings()
settings.refuse_insecure_defaults("the worker")

app = Celery("layercut", broker=settings.broker_url, include=["layercut.worker.tasks"])
app.conf.update(
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options=broker_transport_options(settings),
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=3,
    task_soft_time_limit=settings.task_soft_time_limit,
    task_time_limit=settings.task_hard_time_limit,
    # Replacing a pool process costs the next job about 1-2 s when no other process is idle (billiard sleeps
    # 1 s before a retiring process exits, then forks): recycle when memory says so, and rarely by count.
    worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
    worker_max_memory_per_child=settings.worker_max_memory_per_child_kib,
    task_routes={
        **{task_name(kind): {"queue": queue} for kind, queue in QUEUES.items()},
        REAP_TASK: {"queue": "cpu"},
    },
    task_default_queue="cpu",
    worker_hijack_root_logger=False,
    beat_schedule={
        "reap": {"task": REAP_TASK, "schedule": 15.0, "options": {"queue": "cpu", "expires": 14}},
    },
)


def _check_pool_often(interval: float) -> None:
    """Let the prefork pool look for exited processes every ``interval`` s instead of Celery's fixed 5 s.

    A retiring pool process (worker_max_tasks_per_child, worker_max_memory_per_child) closes its sentinel pipe
    a moment before the kernel lets the parent reap it; the parent reacts to the sentinel, finds no exit
    status yet, stops watching, and only the periodic check replaces the process: up to 5 s during which a
    lone worker takes no job (measured in bench/api.py --max-tasks-per-child 5). The check is one
    waitpid(WNOHANG) per pool process."""
    from celery.concurrency import asynpool

    asynpool.AsynPool.timers = property(lambda pool: {pool.maintain_pool: interval})


_check_pool_often(settings.worker_pool_check_seconds)


@signals.worker_init.connect
def _preload_pipeline(**_: object) -> None:
    """Import torch and the stages once in the worker's main process, before the pool forks: a child that
    replaces one retired by worker_max_tasks_per_child then starts in milliseconds instead of seconds.
    Importing torch does not initialise CUDA; that still happens only inside the child running a job."""
    import layercut.stages.stages  # noqa: F401


POOL_PROCESS = {"is": False}
"""Whether this process is a prefork pool child (the only kind of process the cancel watchdog may end)."""


@signals.worker_process_init.connect
def _child_started(**_: object) -> None:
    """A prefork child: drop database connections inherited from the parent, start this process's reaper timer."""
    POOL_PROCESS["is"] = True
    get_engine(settings.resolved_database_url).dispose(close=False)
    start_reaper(settings)


@signals.setup_logging.connect
def _logging(**_: object) -> None:
    """Celery's own logging set-up is replaced by layercut's: JSON lines (or text) with job and pipeline ids."""
    telemetry.configure_logging(settings.log_format, settings.log_level)


@signals.worker_init.connect
def _serve_metrics(**_: object) -> None:
    """Prometheus /metrics of this worker (every pool process's job durations, failures and GPU peaks summed) on
    LAYERCUT_WORKER_METRICS_PORT."""
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.worker_metrics_port, registry=telemetry.metrics_registry())
        except OSError as exc:  # another worker on this machine has the port: say so, keep working
            log.warning(
                "no /metrics on port %d (%s); give each worker its own LAYERCUT_WORKER_METRICS_PORT",
                settings.worker_metrics_port,
                exc,
            )
        else:
            log.info("metrics on port %d", settings.worker_metrics_port)


@signals.worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: object) -> None:
    """A pool process that exits stops counting towards the gauges (its counters stay summed)."""
    if telemetry.MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


@signals.worker_ready.connect
def _worker_ready(sender=None, **_: object) -> None:
    """Solo/thread pools have no children (no worker_process_init): run the reaper timer in this process."""
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__.startswith("celery.concurrency.prefork"):
        return  # the children run it; a thread in the parent would be copied into every fork
    start_reaper(settings)
