"""layercut's core: the pipeline stages, the store and the command line, importable without the web or the queue."""
