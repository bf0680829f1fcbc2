"""Benchmark of the HTTP service (not a test): status polls against /healthz, and submit-to-start.

1. Polls: a fresh Postgres database (Alembic-migrated), an API key and --jobs job rows; the API served by
   uvicorn (--api-workers processes) on 127.0.0.1. --clients concurrent clients (asyncio + httpx, one
   keep-alive connection each) call GET /healthz for --duration seconds, then GET /v1/jobs/{id} (ids in
   turn, each a full JobOut with its artifact list) for --duration seconds; each phase is bounded by
   --max-requests too, after --warmup seconds not counted. Printed: requests/s, p50/p99 latency of each,
   the ratio polls/healthz (target >= 50 %) and the p99 of polls (target < 50 ms).
2. Submit-to-start: a real Celery worker (`celery -A layercut.worker.app worker -Q gpu,cpu --concurrency 1`) on
   Redis (its own database number, flushed first). The builtin textures set is registered, one warm-up job
   runs, then --submits times, one at a time: POST /v1/jobs (a tiny smallcnn train job), poll the row until
   started_at is set (the worker's claim), then cancel it and wait for it to end. submit-to-start =
   started_at (server clock, same machine) - the wall time just before the POST. Target: p50/p99 < 200 ms.

Everything runs on loopback; the script stops its processes and drops its database on the way out, and
stops by itself after --budget seconds whatever happens.

Run:  .venv/bin/python bench/api.py [--duration 10] [--clients 32] [--api-workers 2] [--submits 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx

from layercut.testing import services

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# --------------------------------------------------------------------------------------------------
# load


class RawConnection:
    """A minimal keep-alive HTTP/1.1 GET over asyncio streams: the load generator shares the 2 cores with the
    server, so it must cost far less CPU per request than httpx does."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader = self.writer = None

    async def get(self, path: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.extra}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("chunked responses are not expected here")
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None


async def hammer(
    base: str,
    paths: list[str],
    headers: dict[str, str],
    clients: int,
    duration: float,
    warmup: float,
    max_requests: int,
) -> dict:
    """``clients`` loops, each on its own keep-alive connection, cycling through ``paths``; latencies after warm-up."""
    from urllib.parse import urlsplit

    where = urlsplit(base)
    latencies: list[float] = []
    errors = 0
    counted = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def one(worker: int) -> None:
        nonlocal errors, counted
        connection = RawConnection(where.hostname, where.port, headers)
        i = worker
        try:
            while True:
                if time.perf_counter() >= stop_at or counted >= max_requests:
                    return
                path = paths[i % len(paths)]
                i += clients
                t0 = time.perf_counter()
                try:
                    ok = await asyncio.wait_for(connection.get(path), 10) == 200
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                    ok = False
                    await connection.close()
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    counted += 1
                    if ok:
                        latencies.append(t1 - t0)
                    else:
                        errors += 1
        finally:
            await connection.close()

    await asyncio.gather(*(one(w) for w in range(clients)))
    elapsed = min(time.perf_counter(), stop_at) - measure_from
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": len(latencies) / elapsed if elapsed > 0 else float("nan"),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
    }


# --------------------------------------------------------------------------------------------------
# setup


def seed_database(url: str, jobs: int) -> tuple[str, list[str]]:
    from sqlalchemy import create_engine, pool
    from sqlalchemy.orm import Session

    from layercut.store.keys import create_key
    from layercut.store.models import Artifact, Job

    engine = create_engine(url, poolclass=pool.NullPool)
    with Session(engine) as session:
        _, key = create_key(session, "bench", "bench/api.py")
        ids = []
        now = datetime.now(timezone.utc)
        for i in range(jobs):
            job = Job(
                id=uuid.uuid4(),
                tenant="bench",
                kind="train",
                status="succeeded" if i % 2 else "running",
                stage="train",
                progress=1.0 if i % 2 else 0.5,
                params={"kind": "train", "arch": "smallcnn"},
                result={"metrics": {"accuracy": 0.9}} if i % 2 else None,
                created_at=now,
                started_at=now,
                heartbeat_at=now,
                attempts=1,
                worker="bench",
            )
            session.add(job)
            session.flush()
            for name in ("model.safetensors", "metrics.json"):
                session.add(
                    Artifact(
                        tenant="bench",
                        job_id=job.id,
                        path=f"bench/{job.id}/{name}",
                        kind="other",
                        bytes=1,
                        sha256="0" * 64,
                        content_type="application/octet-stream",
                    )
                )
            ids.append(str(job.id))
        session.commit()
    engine.dispose()
    return key, ids


def started_at(url: str, job_id: str) -> datetime | None:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select started_at, status from jobs where id = %s", (job_id,)).fetchone()
    return row[0] if row else None


def submit_to_start(base: str, key: str, url: str, submits: int, timeout: float) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    samples, post_ms = [], []
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        dataset = client.post(
            "/v1/datasets",
            json={"kind": "builtin", "builtin": "textures", "name": "textures"},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        dataset.raise_for_status()
        params = {
            "kind": "train",
            "data": {"dataset_id": dataset.json()["id"], "image_size": 32},
            "arch": "smallcnn",
            "train": {"epochs": 1, "device": "cpu"},
        }

        def one(measure: bool) -> None:
            t0 = time.time()
            p0 = time.perf_counter()
            response = client.post("/v1/jobs", json={"params": params}, headers={"Idempotency-Key": str(uuid.uuid4())})
            post_elapsed = time.perf_counter() - p0
            response.raise_for_status()
            job_id = response.json()["id"]
            deadline = time.monotonic() + timeout
            when = None
            while time.monotonic() < deadline:
                when = started_at(url, job_id)
                if when is not None:
                    break
                time.sleep(0.005)
            if when is None:
                raise RuntimeError(f"job {job_id} did not start within {timeout} s (is the worker up?)")
            if measure:
                samples.append((when.timestamp() - t0) * 1000)
                post_ms.append(post_elapsed * 1000)
            client.post(f"/v1/jobs/{job_id}/cancel")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if client.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed", "cancelled"):
                    return
                time.sleep(0.05)
            raise RuntimeError(f"job {job_id} did not end within {timeout} s after cancel")

        one(measure=False)  # warm-up: the worker's first job imports torch and the stages
        for _ in range(submits):
            one(measure=True)
    return {
        "submits": len(samples),
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples),
        "post_p50_ms": percentile(post_ms, 50),
        "samples_ms": [round(s, 1) for s in samples],
    }


# --------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds not counted at the start of each phase")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--jobs", type=int, default=100, help="job rows to poll")
    parser.add_argument("--max-requests", type=int, default=200_000, help="per phase")
    parser.add_argument("--submits", type=int, default=20, help="measured submissions (0: skip the worker part)")
    parser.add_argument("--worker-concurrency", type=int, default=1, help="worker pool processes")
    parser.add_argument(
        "--max-tasks-per-child",
        type=int,
        default=None,
        help="LAYERCUT_WORKER_MAX_TASKS_PER_CHILD for the worker (default: the setting's default)",
    )
    parser.add_argument("--no-read-cache", action="store_true", help="LAYERCUT_READ_CACHE=false for the API")
    parser.add_argument("--job-timeout", type=float, default=120.0)
    parser.add_argument("--budget", type=int, default=900, help="hard limit of the whole run in seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"over --budget {args.budget} s")))
    signal.alarm(args.budget)

    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"settings: {json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")

    url = services.create_database()
    services.migrate(url)
    services.ensure_redis()
    broker = f"{services.REDIS_URL.rstrip('/')}/14"
    import redis

    redis.Redis.from_url(broker).flushdb()
    artifacts = Path(tempfile.mkdtemp(prefix="layercut-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERCUT_")}
    if args.max_tasks_per_child is not None:
        env["LAYERCUT_WORKER_MAX_TASKS_PER_CHILD"] = str(args.max_tasks_per_child)
    if args.no_read_cache:
        env["LAYERCUT_READ_CACHE"] = "false"
    env.update(
        LAYERCUT_DATABASE_URL=url,
        LAYERCUT_BROKER_URL=broker,
        LAYERCUT_ARTIFACT_ROOT=str(artifacts),
        LAYERCUT_DATA_DIR=str(artifacts / "data"),
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
    )
    print(f"database: {url}\nbroker: {broker}\nartifacts: {artifacts}")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = worker = None
    results: dict = {"settings": vars(args) | {"json": str(args.json) if args.json else None}}
    try:
        key, ids = seed_database(url, args.jobs)
        api_cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "layercut.api.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.api_workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        print("api:", " ".join(api_cmd[1:]))
        api = subprocess.Popen(api_cmd, env=env, cwd=ROOT, start_new_session=True)
        wait_http(f"{base}/healthz", api)
        headers = {"Authorization": f"Bearer {key}"}

        health = asyncio.run(
            hammer(base, ["/healthz"], {}, args.clients, args.duration, args.warmup, args.max_requests)
        )
        polls = asyncio.run(
            hammer(
                base,
                [f"/v1/jobs/{i}" for i in ids],
                headers,
                args.clients,
                args.duration,
                args.warmup,
                args.max_requests,
            )
        )
        ratio = polls["rps"] / health["rps"] if health["rps"] else float("nan")
        results.update(healthz=health, polls=polls, ratio=ratio)
        print(
            f"\n{args.clients} clients, {args.api_workers} API worker(s), {args.duration:g} s each after {args.warmup:g} s warm-up"
        )
        print(f"{'endpoint':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}{'errors':>8}")
        for name, r in (("GET /healthz", health), ("GET /v1/jobs/{id}", polls)):
            print(
                f"{name:<22}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['requests']:>10}{r['errors']:>8}"
            )
        print(
            f"polls/healthz: {ratio:.0%} (target >= 50%: {'met' if ratio >= 0.5 else 'NOT met'}); "
            f"poll p99 {polls['p99_ms']:.1f} ms (target < 50 ms: {'met' if polls['p99_ms'] < 50 else 'NOT met'})"
        )

        if args.submits > 0:
            worker_cmd = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "layercut.worker.app",
                "worker",
                "-Q",
                "gpu,cpu",
                "--concurrency",
                str(args.worker_concurrency),
                "--loglevel",
                "WARNING",
                "-n",
                f"bench-{uuid.uuid4().hex[:6]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
            print("\nworker:", " ".join(worker_cmd[1:]))
            worker = subprocess.Popen(worker_cmd, env=env, cwd=ROOT, start_new_session=True)
            s2s = submit_to_start(base, key, url, args.submits, args.job_timeout)
            results["submit_to_start"] = s2s
            print(
                f"submit-to-start over {s2s['submits']} jobs: p50 {s2s['p50_ms']:.0f} ms, p99 {s2s['p99_ms']:.0f} ms, "
                f"max {s2s['max_ms']:.0f} ms (target < 200 ms: {'met' if s2s['p99_ms'] < 200 else 'NOT met'}); "
                f"the POST itself p50 {s2s['post_p50_ms']:.0f} ms"
            )
    finally:
        signal.alarm(0)
        stop(worker)
        stop(api)
        try:
            services.drop_database(url)
        except Exception as exc:  # noqa: BLE001
            print(f"could not drop {url}: {exc}", file=sys.stderr)
        import shutil

        shutil.rmtree(artifacts, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
