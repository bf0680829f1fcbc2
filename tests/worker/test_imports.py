"""The worker module and layercut.jobs import without torch (torch is loaded only inside a task), and the
Celery app carries the delivery guarantees the service relies on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        "LAYERCUT_WORKER_MAX_TASKS_PER_CHILD": "7",
        "LAYERCUT_WORKER_MAX_MEMORY_PER_CHILD_KIB": "123456",
        "LAYERCUT_WORKER_POOL_CHECK_SECONDS": "0.5",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
