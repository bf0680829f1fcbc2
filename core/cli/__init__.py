"""The ``layercut`` command line."""
