"""The Celery app: ``celery -A layercut.worker.app worker -Q gpu,cpu``. Configured from Settings (LAYERCUT_*).

Celery is transport only: no result backend (Postgres holds job state), late acks so a message whose
worker died is delivered again (the job's compare-and-set claim makes that harmless), prefetch 1.
The reaper runs as the beat task ``layercut.reap`` and, so a lone worker recovers lost jobs without a
beat process, on a timer inside every worker process. Importing this module does not import torch.
"""

from __future__ import annotations

import logging

from celery import Celery, signals

from layercut.contracts.kinds import QUEUES, REAP_TASK, task_name
from layercut.jobs.dispatch import broker_transport_options
from layercut.jobs.service import start_reaper
from layercut.settings import get_settings
from layercut.store.db import get_engine

log = logging.getLogger(__name__)

settings = get_settings()

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


@signals.worker_process_init.connect
def _child_started(**_: object) -> None:
    """A prefork child: drop database connections inherited from the parent, start this process's reaper timer."""
    get_engine(settings.resolved_database_url).dispose(close=False)
    start_reaper(settings)


@signals.worker_ready.connect
def _worker_ready(sender=None, **_: object) -> None:
    """Solo/thread pools have no children (no worker_process_init): run the reaper timer in this process."""
    pool = getattr(sender, "pool", None)
    if pool is not None and type(pool).__module__.startswith("celery.concurrency.prefork"):
        return  # the children run it; a thread in the parent would be copied into every fork
    start_reaper(settings)
