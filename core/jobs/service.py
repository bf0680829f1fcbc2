"""The job engine of one process, wired together: the dispatcher its settings call for and the reaper's timer.

In the service a dispatcher sends jobs to Celery by task name; embedded (no broker), it runs them here with
``execute_job`` in a thread, and the reaper's timer starts with it. Everything that sends jobs (the API, the
worker's tasks, the reaper) gets its dispatcher from ``get_dispatcher``, so the runner, the reaper and the
dispatchers never need to import one another.
"""

from __future__ import annotations

import threading

from layercut.jobs.dispatch import CeleryDispatcher, Dispatcher, InProcessDispatcher
from layercut.jobs.reaper import ReaperThread, start_reaper_thread
from layercut.jobs.runner import execute_job
from layercut.settings import Settings

_dispatchers: dict[str, Dispatcher] = {}
_dispatchers_lock = threading.Lock()


def get_dispatcher(settings: Settings) -> Dispatcher:
    """The dispatcher for ``settings`` (one per distinct settings, per process); embedded mode also starts the
    reaper timer."""
    key = settings.model_dump_json()
    with _dispatchers_lock:
        dispatcher = _dispatchers.get(key)
        if dispatcher is None:
            if settings.embedded:
                dispatcher = InProcessDispatcher(settings, execute_job)
                start_reaper_thread(settings, dispatcher)
            else:
                dispatcher = CeleryDispatcher(settings)
            _dispatchers[key] = dispatcher
        return dispatcher


def start_reaper(settings: Settings) -> ReaperThread:
    """Start this process's reaper timer (once per settings), re-sending jobs through ``get_dispatcher(settings)``."""
    return start_reaper_thread(settings, get_dispatcher(settings))
