"""What follows a job's final status, wherever it was reached (the runner, the reaper): its pipeline advances
and its callback is sent."""

from __future__ import annotations

import logging
import uuid

from layercut.jobs import callbacks, fairness, pipelines
from layercut.jobs.dispatch import Dispatcher
from layercut.settings import Settings

log = logging.getLogger(__name__)


def finished(settings: Settings, job_id: uuid.UUID, dispatcher: Dispatcher | None) -> None:
    """After a job reached a final status: advance its pipeline (sending the steps it unblocks through
    ``dispatcher``), send its tenant's next deferred job and its callback. Errors are only logged: the job's own status is already recorded."""
    try:
        pipelines.job_finished(settings, job_id, dispatcher)
    except Exception:
        log.exception("advancing the pipeline of job %s failed", job_id)
    try:
        fairness.release(settings, job_id, dispatcher)
    except Exception:
        log.exception("sending the deferred jobs of the tenant of job %s failed", job_id)
    try:
        callbacks.job_finished(settings, job_id)
    except Exception:
        log.exception("sending the callback of job %s failed", job_id)
