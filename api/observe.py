"""The API's side of what an operator watches: a request id on every request and its log lines, one log line and
the Prometheus request metrics per answer, and ``GET /metrics`` with the job and queue figures read at scrape
time (``layercut.telemetry`` holds the metrics and the log format)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from layercut import telemetry
from layercut.contracts.kinds import QUEUES
from layercut.settings import Settings
from layercut.store.db import get_sessionmaker
from layercut.store.models import Job

log = logging.getLogger("layercut.api.requests")
QUIET_ROUTES = {"/metrics", "/healthz", "/readyz"}
"""Polled by machines: their answers are logged at DEBUG only."""


class RequestContext:
    """ASGI middleware: takes the caller's ``X-Request-ID`` (or makes one), binds it for the request's log lines,
    echoes it in the answer, then counts and times the answer by route template and logs one line for it."""

    def __init__(self, app: Any, route_of: Callable[[str], str | None] = lambda path: None) -> None:
        self.app = app
        self.route_of = route_of

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope.get("headers") or []).get(b"x-request-id")
        request_id = telemetry.new_request_id(offered.decode("latin-1") if offered else None)
        answered = {"status": 500}
        started = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        with telemetry.bound(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                route = self.route_of(scope.get("path", "")) or getattr(scope.get("route"), "path", None) or "unmatched"
                method, status = scope.get("method", ""), answered["status"]
                telemetry.observe_request(route, method, status, seconds)
                log.log(
                    logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
                    "%s %s %d %.1f ms",
                    method,
                    scope.get("path", ""),
                    status,
                    1000 * seconds,
                    extra=telemetry.log_extra(route=route, method=method, status=status, ms=round(1000 * seconds, 1)),
                )


class ServiceFigures(Collector):
    """Jobs by kind and status (from the database, so the same figure whichever API process is scraped) and the
    messages waiting in each broker queue (Redis), read when /metrics is asked for."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Any:
        jobs = GaugeMetricFamily("layercut_jobs", "jobs stored, by kind and status", labels=["kind", "status"])
        waiting = GaugeMetricFamily(
            "layercut_jobs_waiting", "queued jobs, by the queue their kind runs on", labels=["queue"]
        )
        with get_sessionmaker(self.settings.resolved_database_url)() as session:
            rows = session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)).all()
        per_queue = {queue: 0 for queue in sorted(set(QUEUES.values()))}
        for kind, status, count in rows:
            jobs.add_metric([kind, status], count)
            if status == "queued":
                queue = QUEUES.get(kind, "cpu")
                per_queue[queue] = per_queue.get(queue, 0) + count
        for queue, count in per_queue.items():
            waiting.add_metric([queue], count)
        yield jobs
        yield waiting
        if self.settings.broker_url and self.settings.broker_url.startswith(("redis://", "rediss://")):
            yield self._broker_queues(list(per_queue))

    def _broker_queues(self, queues: list[str]) -> GaugeMetricFamily:
        import redis

        depth = GaugeMetricFamily(
            "layercut_broker_queue_messages", "messages waiting in each Celery queue on the broker", labels=["queue"]
        )
        client = redis.Redis.from_url(self.settings.broker_url or "", socket_connect_timeout=1, socket_timeout=1)
        try:
            for queue in queues:
                depth.add_metric([queue], int(client.llen(queue)))
        except redis.RedisError as exc:
            log.warning("broker queue depth not read: %s", exc)
        finally:
            client.close()
        return depth


def metrics_answer(settings: Settings) -> tuple[bytes, str]:
    """The text a Prometheus scrape of the API reads: this process's (or every API process's) request and job
    metrics, then the service's figures."""
    figures = CollectorRegistry()
    figures.register(ServiceFigures(settings))
    return generate_latest(telemetry.metrics_registry()) + generate_latest(figures), CONTENT_TYPE_LATEST
