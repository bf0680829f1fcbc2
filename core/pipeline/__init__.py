"""The slimming pipeline: train → analyze → truncate → retrain → compare, as plain functions.

Kept free of heavy imports so that ``core.pipeline.config`` (pydantic only) can be used by the API
without importing torch. The notebook-facing API lives in ``core.pipeline.api``.
"""
