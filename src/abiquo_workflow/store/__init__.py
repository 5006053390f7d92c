"""Persistence and the job queue: SQLAlchemy Core on SQLite (aiosqlite) or PostgreSQL (psycopg 3).

Only this package speaks SQL. Callers get frozen records (`records.py`) and `StoreError` for anything
the database refuses.
"""

from __future__ import annotations

from abiquo_workflow.store.queue import DEFAULT_MAX_ATTEMPTS
from abiquo_workflow.store.records import (
    AuditRecord,
    JobRecord,
    JobStatus,
    NotificationRecord,
    NotificationStatus,
    RequestRecord,
    TaskRecord,
)
from abiquo_workflow.store.schema import migrate
from abiquo_workflow.store.store import Clock, Reader, Store, UnitOfWork, utc_now

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "AuditRecord",
    "Clock",
    "JobRecord",
    "JobStatus",
    "NotificationRecord",
    "NotificationStatus",
    "Reader",
    "RequestRecord",
    "Store",
    "TaskRecord",
    "UnitOfWork",
    "migrate",
    "utc_now",
]
