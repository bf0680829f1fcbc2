"""One Celery task per job kind (``layercut.<kind>``), each running ``layercut.jobs.runner.execute_job``, and the
reaper. The pipeline steps a job unblocks, and the jobs the reaper re-sends, go out through the Celery dispatcher."""

from __future__ import annotations

import os

from celery import Task

from layercut.contracts.kinds import QUEUES, REAP_TASK, STAGE_KINDS, task_name
from layercut.jobs.reaper import reap as reap_once
from layercut.jobs.runner import end_this_process, execute_job
from layercut.jobs.service import get_dispatcher
from layercut.worker.app import POOL_PROCESS, app, settings


def _run(task: Task, job_id: str) -> str:
    """Execute the job in this worker process; the pipeline steps it unblocks go out through the Celery dispatcher."""
    worker_name = f"{task.request.hostname}:{os.getpid()}"
    stop_process = end_this_process if POOL_PROCESS["is"] else None  # a solo worker must not end itself
    return execute_job(
        job_id, settings, worker_name=worker_name, dispatcher=get_dispatcher(settings), stop_process=stop_process
    )


@app.task(name=task_name("train"), bind=True)
def train(self, job_id: str) -> str:
    """Train a base model."""
    return _run(self, job_id)


@app.task(name=task_name("analyze"), bind=True)
def analyze(self, job_id: str) -> str:
    """GBP/SSIM analysis of a model and its knee."""
    return _run(self, job_id)


@app.task(name=task_name("truncate"), bind=True)
def truncate(self, job_id: str) -> str:
    """Cut a model at a cut point."""
    return _run(self, job_id)


@app.task(name=task_name("retrain"), bind=True)
def retrain(self, job_id: str) -> str:
    """Fine-tune a slim model."""
    return _run(self, job_id)


@app.task(name=task_name("select"), bind=True)
def select(self, job_id: str) -> str:
    """The auto cut: retrain candidate slim models until the smallest within the accuracy budget is certain."""
    return _run(self, job_id)


@app.task(name=task_name("sweep_plan"), bind=True)
def sweep_plan(self, job_id: str) -> str:
    """Resolve a sweep's cut points and fan out one sweep_cut job per cut point, plus the job that gathers them."""
    return _run(self, job_id)


@app.task(name=task_name("sweep_cut"), bind=True)
def sweep_cut(self, job_id: str) -> str:
    """Cut and retrain one cut point of a sweep."""
    return _run(self, job_id)


@app.task(name=task_name("sweep"), bind=True)
def sweep(self, job_id: str) -> str:
    """Gather a sweep's retrained cut points into sweep.json and the trade-off chart."""
    return _run(self, job_id)


@app.task(name=task_name("compare"), bind=True)
def compare(self, job_id: str) -> str:
    """Compare a base and a slim model."""
    return _run(self, job_id)


@app.task(name=task_name("explain"), bind=True)
def explain(self, job_id: str) -> str:
    """Explain a model's predictions (CAMs, guided backprop, saliency), beside a second model's."""
    return _run(self, job_id)


@app.task(name=task_name("import"), bind=True)
def import_model(self, job_id: str) -> str:
    """Check an uploaded model against its architecture and write it as a checkpoint."""
    return _run(self, job_id)


@app.task(name=task_name("export"), bind=True)
def export(self, job_id: str) -> str:
    """Write a model as a deployable file (ONNX, TorchScript or ExportedProgram), checked against torch."""
    return _run(self, job_id)


@app.task(name=task_name("mlflow"), bind=True)
def mlflow(self, job_id: str) -> str:
    """Log a finished pipeline to the service's MLflow tracking server."""
    return _run(self, job_id)


@app.task(name=REAP_TASK, acks_late=False)
def reap() -> dict:
    """Re-queue jobs whose worker died and re-send jobs lost by the broker."""
    return reap_once(settings, get_dispatcher(settings))


assert set(QUEUES) == set(STAGE_KINDS) and all(task_name(kind) in app.tasks for kind in STAGE_KINDS)
