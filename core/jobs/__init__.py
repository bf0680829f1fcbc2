"""Running jobs, in modules with one job each:

- ``dispatch``: handing a job to Celery by task name, or to a thread in embedded mode;
- ``runner``: ``execute_job``, the entry point of a worker: claim, run, settle;
- ``progress``: the heartbeat and the progress writes of a claimed job;
- ``resolve``: a job's inputs (datasets, model references, analyses) as rows and paths;
- ``stage``: running the stage of a job's kind (the only module that imports ``layercut.stages``);
- ``outputs``: recording artifacts, model versions and the job's result;
- ``lifecycle``: what follows a final status: ``pipelines`` advances, ``callbacks`` are sent;
- ``reaper``: re-queuing jobs whose worker died, re-sending jobs never sent;
- ``service``: the dispatcher a process's settings call for, and its reaper timer.

Nothing here imports torch at module level: the API imports the engine to send jobs, and the stages load only
when a job runs.
"""
