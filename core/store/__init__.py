"""Persistence: SQLAlchemy 2.0 models, engine/session, and the job repository (state transitions)."""
