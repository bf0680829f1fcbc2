"""The worker module and layercut.jobs import without torch (torch is loaded only inside a task), the Celery app
carries the delivery guarantees the service relies on, and the job engine's modules import one another in one
direction only."""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
from pathlib import Path

import layercut.jobs
from layercut.contracts.kinds import STAGE_KINDS

ROOT = Path(__file__).resolve().parents[2]


def test_worker_and_dispatch_import_without_torch():
    code = (
        "import sys, layercut.worker.app, layercut.worker.tasks, layercut.jobs.dispatch, layercut.jobs.runner, layercut.jobs.reaper, "
        "layercut.jobs.pipelines, layercut.jobs.callbacks; assert 'torch' not in sys.modules, 'torch imported'; "
        "app = layercut.worker.app.app; c = app.conf; "
        "assert c.task_acks_late and c.task_reject_on_worker_lost and c.worker_prefetch_multiplier == 1; "
        "assert c.broker_transport_options['visibility_timeout'] > c.task_time_limit > c.task_soft_time_limit; "
        "assert c.task_routes['layercut.train'] == {'queue': 'gpu'} and c.task_routes['layercut.truncate'] == {'queue': 'cpu'}; "
        "assert c.beat_schedule['reap']['task'] == 'layercut.reap'; "
        "assert c.worker_max_tasks_per_child == 7 and c.worker_max_memory_per_child == 123456; "
        "from celery.concurrency.asynpool import AsynPool; "
        "assert list(AsynPool.timers.fget(type('P', (), {'maintain_pool': 1})()).values()) == [0.5]; "
        "assert {'layercut.train', 'layercut.analyze', 'layercut.truncate', 'layercut.retrain', 'layercut.compare', "
        "'layercut.reap'} <= set(app.tasks)"
    )
    env = {
        **os.environ,
        "LAYERCUT_BROKER_URL": "redis://127.0.0.1:6379/9",
        "LAYERCUT_CALLBACK_SECRET": "a-secret-of-this-test",  # the service refuses the default
        "LAYERCUT_WORKER_MAX_TASKS_PER_CHILD": "7",
        "LAYERCUT_WORKER_MAX_MEMORY_PER_CHILD_KIB": "123456",
        "LAYERCUT_WORKER_POOL_CHECK_SECONDS": "0.5",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at its top or inside functions (``from p import m`` counts ``p.m`` too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def jobs_import_graph() -> dict[str, set[str]]:
    """Each ``layercut.jobs`` module → the ``layercut.jobs`` modules it imports anywhere in its source."""
    folder = Path(layercut.jobs.__file__).parent
    modules = {path.stem: path for path in folder.glob("*.py") if path.stem != "__init__"}
    return {
        name: {other for other in modules if other != name and f"layercut.jobs.{other}" in imported_modules(path)}
        for name, path in modules.items()
    }


def test_the_job_engine_has_no_import_cycle():
    graph = jobs_import_graph()
    assert {"runner", "dispatch", "reaper", "pipelines", "callbacks", "lifecycle", "stage"} <= set(graph)
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle among layercut.jobs modules: {' → '.join(exc.args[1])}") from None
    assert order.index("dispatch") < order.index("runner") < order.index("service")


def test_only_the_stage_module_imports_the_stages():
    folder = Path(layercut.jobs.__file__).parent
    importers = {
        path.stem
        for path in folder.glob("*.py")
        if any(m == "layercut.stages" or m.startswith("layercut.stages.") for m in imported_modules(path))
    }
    assert importers == {"stage"}


def test_every_stage_kind_has_a_runner():
    from layercut.jobs.stage import STAGE_RUNNERS

    assert set(STAGE_RUNNERS) == set(STAGE_KINDS)


def test_a_worker_refuses_the_default_callback_secret():
    """A worker (service mode: a broker configured) does not start on the default callback secret; it says what
    to set, and the development flag lets it start."""
    code = "import layercut.worker.app"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERCUT_")}
    env["LAYERCUT_BROKER_URL"] = "redis://127.0.0.1:6379/9"
    refused = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "LAYERCUT_CALLBACK_SECRET is the default" in refused.stderr
    env["LAYERCUT_ALLOW_INSECURE_DEFAULTS"] = "1"
    allowed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
