"""Handing a queued job to whatever runs it: Celery (by task name) in the service, a thread in embedded mode.

Contract for callers (the API): commit the new ``queued`` job row first, then call
``dispatcher.dispatch(job.id, job.kind)`` and catch ``DispatchError``. A failed send leaves the row ``queued``
with ``dispatched_at`` unset; the reaper (``layercut.jobs.reaper``) re-sends it, so a job is never lost. Sending
twice is harmless: the worker claims a job with a compare-and-set. ``layercut.jobs.service.get_dispatcher`` picks
the dispatcher a process's settings call for.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from layercut.contracts.kinds import QUEUES, task_name
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository

log = logging.getLogger(__name__)

SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.3, "interval_max": 0.5}
"""Publishing retries briefly (a broker blip), then gives up so the request is not held: the reaper re-sends."""


class DispatchError(Exception):
    """The job could not be handed to the broker; its row stays queued for the re-dispatcher."""


class Dispatcher(Protocol):
    def dispatch(self, job_id: uuid.UUID, kind: str) -> None:
        """Send job ``job_id`` of ``kind`` to be run; raises DispatchError when it could not be sent."""
        ...


class JobExecutor(Protocol):
    def __call__(self, job_id: uuid.UUID, settings: Settings, worker_name: str, dispatcher: Dispatcher) -> str:
        """Run one job to its final status (``layercut.jobs.runner.execute_job``), sending the pipeline steps it
        unblocks through ``dispatcher``."""
        ...


@runtime_checkable
class InspectableDispatcher(Protocol):
    def waiting(self) -> set[uuid.UUID]:
        """Jobs whose message is known to still wait for a worker (the reaper does not re-send those)."""
        ...


def _mark_dispatched(settings: Settings, job_id: uuid.UUID) -> None:
    with get_sessionmaker(settings.resolved_database_url)() as session:
        JobRepository(session).mark_dispatched(job_id)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Redis transport options shared by the producer and the worker: visibility above the hard limit, short connects."""
    return {
        "visibility_timeout": settings.task_hard_time_limit + 3600,
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    }


class CeleryDispatcher:
    """Sends ``layercut.<kind>`` by name to its queue (gpu or cpu), never importing worker code or torch."""

    def __init__(self, settings: Settings) -> None:
        import celery  # light: no torch, no worker code

        if not settings.broker_url:
            raise ValueError("CeleryDispatcher needs LAYERCUT_BROKER_URL")
        self.settings = settings
        self.app = celery.Celery("layercut-dispatch", broker=settings.broker_url, set_as_current=False)
        self.app.conf.update(
            broker_transport_options=broker_transport_options(settings),
            broker_connection_timeout=3,
            task_ignore_result=True,
        )

    def dispatch(self, job_id: uuid.UUID, kind: str) -> None:
        """Publish the task (task id = job id) and mark the row dispatched; DispatchError if the broker is unreachable."""
        if kind not in QUEUES:
            raise DispatchError(f"unknown job kind {kind!r}")
        try:
            self.app.send_task(
                task_name(kind),
                args=[str(job_id)],
                queue=QUEUES[kind],
                task_id=str(job_id),
                retry=True,
                retry_policy=SEND_RETRY_POLICY,
            )
        except Exception as exc:  # kombu/redis raise many types; all mean "not sent"
            log.warning("could not send job %s (%s) to the broker: %s", job_id, kind, exc)
            raise DispatchError(f"could not send job {job_id} to the broker: {type(exc).__name__}: {exc}") from exc
        _mark_dispatched(self.settings, job_id)

    def waiting(self) -> set[uuid.UUID]:
        """Job ids whose message sits in a Redis queue list (not yet taken by any worker); empty if unknown."""
        if not str(self.settings.broker_url).startswith(("redis://", "rediss://")):
            return set()
        found: set[uuid.UUID] = set()
        try:
            with self.app.connection_for_write() as connection:
                client = connection.default_channel.client
                for queue in sorted(set(QUEUES.values())):
                    for name in (queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9))):
                        for raw in client.lrange(name, 0, -1):
                            task_id = json.loads(raw).get("headers", {}).get("id")
                            try:
                                found.add(uuid.UUID(str(task_id)))
                            except ValueError:
                                continue
        except Exception as exc:
            log.warning("could not inspect the broker's queues: %s", exc)
            return set()
        return found


class InProcessDispatcher:
    """Embedded mode: runs each job with ``execute`` (``layercut.jobs.runner.execute_job``) in one background
    thread (jobs run one at a time), passing itself on to send the pipeline steps a job unblocks."""

    def __init__(self, settings: Settings, execute: JobExecutor) -> None:
        self.settings = settings
        self.execute = execute
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="layercut-job")
        self._lock = threading.Lock()
        self._waiting: set[uuid.UUID] = set()

    def dispatch(self, job_id: uuid.UUID, kind: str) -> None:
        """Queue the job on the thread (skipped if it already waits there) and mark the row dispatched."""
        job_id = uuid.UUID(str(job_id))
        with self._lock:
            if job_id in self._waiting:
                return
            self._waiting.add(job_id)
        try:
            self.executor.submit(self._run, job_id)
        except RuntimeError as exc:  # executor shut down
            with self._lock:
                self._waiting.discard(job_id)
            raise DispatchError(str(exc)) from exc
        _mark_dispatched(self.settings, job_id)

    def _run(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._waiting.discard(job_id)
        try:
            self.execute(job_id, self.settings, worker_name="embedded", dispatcher=self)
        except Exception:  # execute_job records failures itself; this is only a last resort log
            log.exception("embedded job %s crashed", job_id)

    def waiting(self) -> set[uuid.UUID]:
        with self._lock:
            return set(self._waiting)

    def shutdown(self, wait: bool = True) -> None:
        self.executor.shutdown(wait=wait)
