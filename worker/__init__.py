"""layercut's Celery workers: one task per job kind, each running a core pipeline stage."""
