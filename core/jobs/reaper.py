"""The reaper: no job is lost, whatever dies.

- A running job whose heartbeat stopped (worker killed, machine lost) is re-queued and re-sent, or,
  after ``max_attempts`` runs, failed with code ``worker_lost`` (JobRepository.reap_stale).
- A queued job that never reached the broker (send failed) or whose message vanished (Redis restarted
  without persistence) is re-sent from Postgres once it has waited ``stale_after_seconds`` and its
  message is not visibly waiting in the broker. Duplicates are harmless: workers claim by compare-and-set.
Run by Celery beat (``layercut.reap``), by a timer in every worker process, and by a timer thread in
embedded mode; several reapers at once are safe. Each re-sends through the dispatcher it is given.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from datetime import timedelta

from layercut.jobs import callbacks, pipelines
from layercut.jobs.dispatch import Dispatcher, DispatchError, InspectableDispatcher
from layercut.jobs.lifecycle import finished
from layercut.jobs.retention import expire, remove_orphans
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository

log = logging.getLogger(__name__)


def reap(settings: Settings, dispatcher: Dispatcher) -> dict[str, list[str]]:
    """One pass: reap stale running jobs, re-send lost or unsent queued ones through ``dispatcher``; returns what
    it did (job ids)."""
    stale_after = timedelta(seconds=settings.stale_after_seconds)
    with get_sessionmaker(settings.resolved_database_url)() as session:
        repo = JobRepository(session)
        outcome = repo.reap_stale(stale_after, settings.max_attempts)
        candidates = repo.undispatched(older_than=stale_after)
        waiting: set[uuid.UUID] = dispatcher.waiting() if isinstance(dispatcher, InspectableDispatcher) else set()
        requeued = set(outcome["requeued"])
        sent, not_sent = [], []
        for job in candidates:
            if job.id not in requeued and job.dispatched_at is not None and job.id in waiting:
                continue  # its message is still in the queue
            if not pipelines.ready(session, job):
                continue  # a pipeline step waiting for its dependency is sent when that ends
            try:
                dispatcher.dispatch(job.id, job.kind)
                sent.append(str(job.id))
            except DispatchError:
                not_sent.append(str(job.id))
    for job_id in outcome["failed"] + outcome["cancelled"]:
        finished(settings, job_id, dispatcher)
    expired = expire(settings)
    orphans = remove_orphans(settings)
    callbacks.deliver_due(settings)  # what the outbox still holds: after a restart, or a failed attempt's retry
    result = {
        "requeued": [str(i) for i in outcome["requeued"]],
        "failed": [str(i) for i in outcome["failed"]],
        "cancelled": [str(i) for i in outcome["cancelled"]],
        "dispatched": sent,
        "not_dispatched": not_sent,
        "expired": [f"{expired['jobs']} job(s)", f"{expired['pipelines']} pipeline(s)"]
        if any(expired.values())
        else [],
        "orphans": [f"{orphans['files']} file(s)", f"{orphans['folders']} folder(s)"] if any(orphans.values()) else [],
    }
    if any(result.values()):
        log.info("reaper: %s", {k: len(v) for k, v in result.items()})
    return result


def reap_interval(settings: Settings) -> float:
    """How often the reaper runs: a third of the stale timeout, between 1 and 15 seconds."""
    return max(1.0, min(15.0, settings.stale_after_seconds / 3))


class ReaperThread(threading.Thread):
    """Runs ``reap`` every ``reap_interval`` seconds until stopped (daemon: it never holds a process open)."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher) -> None:
        super().__init__(name="layercut-reaper", daemon=True)
        self.settings = settings
        self.dispatcher = dispatcher
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = reap_interval(self.settings)
        while not self.stopped.wait(interval):
            try:
                reap(self.settings, self.dispatcher)
            except Exception as exc:  # database or broker down: try again next time
                log.warning("reaper pass failed: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        self.stopped.set()


_threads: dict[str, ReaperThread] = {}
_lock = threading.Lock()


def start_reaper_thread(settings: Settings, dispatcher: Dispatcher) -> ReaperThread:
    """Start (once per settings, per process) the timer thread that runs the reaper with ``dispatcher``."""
    key = settings.model_dump_json()
    with _lock:
        thread = _threads.get(key)
        if thread is None or not thread.is_alive():
            thread = ReaperThread(settings, dispatcher)
            thread.start()
            log.info("reaper timer started in process %d (every %.1fs)", os.getpid(), reap_interval(settings))
            _threads[key] = thread
        return thread
