"""Persistence and the job queue: SQLAlchemy Core on SQLite (sqlite3, on the event loop's thread) or
PostgreSQL (psycopg 3, async).

Only this package speaks SQL. Callers get frozen records (`records.py`) and `StoreError` for anything
the database refuses. Importing it loads neither Alembic (`schema.py` imports it only to migrate) nor
psycopg (`postgres.py`, imported only for a PostgreSQL URL).
"""

from __future__ import annotations

from abiquo_workflow.store.clock import Clock, utc_now
from abiquo_workflow.store.job_queue import JobQueue
from abiquo_workflow.store.queue import DEFAULT_MAX_ATTEMPTS
from abiquo_workflow.store.reads import PendingTasks, Reader, WorkerBeats
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
from abiquo_workflow.store.store import Approved, SchemaStatus, Store, UnitOfWork

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "Approved",
    "AuditRecord",
    "Clock",
    "JobQueue",
    "JobRecord",
    "JobStatus",
    "NotificationRecord",
    "NotificationStatus",
    "PendingTasks",
    "Reader",
    "RequestRecord",
    "SchemaStatus",
    "Store",
    "TaskRecord",
    "UnitOfWork",
    "WorkerBeats",
    "migrate",
    "utc_now",
]
