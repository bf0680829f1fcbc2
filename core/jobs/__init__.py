"""Running jobs: dispatching them (Celery or in-process), executing them in a worker, advancing
pipelines, signed callbacks and the reaper that re-queues jobs whose worker died.

Nothing here imports torch at module level: the API imports ``layercut.jobs.dispatch`` to send jobs,
and only ``layercut.jobs.runner.execute_job`` loads the pipeline stages, inside the worker.
"""
