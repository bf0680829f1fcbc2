"""Fair scheduling between tenants: while jobs of several tenants wait for a worker, the tenant running the fewest
jobs goes first, and among equals the one whose last job started longest ago (round robin). A worker that takes the
message of a job whose tenant must yield leaves the job queued (``deferred_at``, and a message saying why) and goes
on to the next message, so the waiting tenant's job reaches a free worker; as jobs end, deferred jobs are sent
again and judged anew. Alone, a tenant uses every worker. The reaper re-sends a deferred job nothing sent within
the stale timeout."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone

from layercut.jobs.dispatch import Dispatcher, DispatchError, InspectableDispatcher
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.jobs import JobRepository
from layercut.store.models import Job

log = logging.getLogger(__name__)

RELEASE_MAX = 100
"""Most deferred jobs sent again after one job ends."""
NEVER = datetime.min.replace(tzinfo=timezone.utc)


def _turn(load: tuple[int, datetime | None]) -> tuple[int, datetime]:
    """A tenant's place in line: fewer running jobs first, then the longest since its last start (never: first)."""
    running, last = load
    if last is None:
        return running, NEVER
    return running, last if last.tzinfo is not None else last.replace(tzinfo=timezone.utc)


def should_wait(repo: JobRepository, job: Job, dispatcher: Dispatcher | None) -> bool:
    """Whether ``job`` should let another tenant's waiting job go first (known only to a dispatcher that can look
    into the broker: Celery on Redis)."""
    if not isinstance(dispatcher, InspectableDispatcher):
        return False
    others = repo.waiting_tenants(dispatcher.waiting(), besides=job.tenant)
    if not others:
        return False
    load = repo.tenant_load({job.tenant, *others})
    mine = _turn(load[job.tenant])
    return any(_turn(load[tenant]) < mine for tenant in others)


def defer(repo: JobRepository, job: Job) -> bool:
    """Leave ``job`` queued for another tenant's turn; False if it is no longer queued."""
    message = (
        "waiting: other tenants' jobs go first (they run fewer jobs, or waited longer since their last start); "
        "it is sent again as jobs end (LAYERCUT_TENANT_FAIR_SCHEDULING)"
    )
    deferred = repo.defer(job.id, message)
    if deferred:
        log.info("job %s deferred: another tenant's job goes first", job.id)
    return deferred


def release(settings: Settings, job_id: uuid.UUID, dispatcher: Dispatcher | None) -> None:
    """After a job ended, send deferred jobs again: its tenant's oldest, and, when no job waits in the broker any
    more, every deferred job (up to ``RELEASE_MAX``: nobody is left to yield to). Each is judged again when a worker
    takes it. A failed send is left to the reaper."""
    if dispatcher is None:
        return
    with get_sessionmaker(settings.resolved_database_url)() as session:
        repo = JobRepository(session)
        ended = repo.get(job_id)
        if ended is None:
            return
        deferred = repo.deferred_jobs(RELEASE_MAX)
        own = [job for job in deferred if job.tenant == ended.tenant][:1]
        nobody_waits = isinstance(dispatcher, InspectableDispatcher) and not dispatcher.waiting()
        for job in deferred if nobody_waits else own:
            try:
                dispatcher.dispatch(job.id, job.kind)
            except DispatchError as exc:
                log.warning("deferred job %s not sent yet: %s", job.id, exc)
                return
