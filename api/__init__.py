"""layercut's HTTP API (FastAPI). Never imports torch: jobs are enqueued by task name."""
