"""The ML stages: data, architectures and cut points, training, GBP, SSIM, curves and knee, truncation,
comparison, explanations and their pictures, as plain functions that take a progress ``Reporter``.

Stages import nothing of the service (api, worker, store, jobs) and, of the rest of layercut, only the
torch-free contracts; the job engine and ``layercut.local`` call them.
"""
