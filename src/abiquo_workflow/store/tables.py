"""The database schema as SQLAlchemy Core tables: the source the Alembic migrations are checked against.

Enums are stored as their values (text). The state machines (decision, delivery, notification and job
status) and the payload format are guarded by CHECK constraints, so a row never holds a state the code
does not know; open-ended labels (decided_by, channel, audit action, job kind) are not, so adding one
needs no migration. Every constraint gets a name from `NAMING_CONVENTION`: Alembic needs names
to alter constraints on SQLite, where it rebuilds tables ("batch" mode).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

from abiquo_workflow.domain import DecisionState, DeliveryState, PayloadFormat
from abiquo_workflow.store.records import JobStatus, NotificationStatus

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    PostgreSQL keeps `timestamptz`. SQLite has no time zones: values are written as naive UTC text (which
    sorts chronologically) and come back with `tzinfo=UTC`. Naive datetimes are refused, because nothing
    could tell which zone they meant.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware UTC datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _one_of(column: str, values: type[enum.StrEnum], *, nullable: bool = False) -> CheckConstraint:
    """A CHECK that `column` holds one of the enum's values (or NULL), named after the column."""
    allowed = ", ".join(f"'{v.value}'" for v in values)
    check = f"{column} IN ({allowed})"
    return CheckConstraint(f"{column} IS NULL OR {check}" if nullable else check, name=column)


def _json() -> JSON:
    # none_as_null: Python None is stored as SQL NULL, not as the JSON text 'null'.
    return JSON(none_as_null=True)


requests = Table(
    "requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("format", String(8), nullable=False),
    Column("single_root", Boolean(), nullable=False),
    Column("content_type", String(255)),
    Column("source", String(255)),
    Column("body", Text(), nullable=False),
    Column("requester_id", String(64)),
    Column("requester_href", Text()),
    Column("details", _json()),
    Column("approvers", _json()),
    Column("triaged_at", UtcDateTime()),
    Column("triage_error", Text()),
    # The request's enterprise as triage read it (the VM's, else the requester's): the listings' scope.
    Column("enterprise_id", String(64)),
    _one_of("format", PayloadFormat),
    Index(None, "received_at", "id"),
    Index(None, "enterprise_id", "received_at", "id"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", String(255), primary_key=True),
    Column("request_id", String(36), ForeignKey("requests.id"), nullable=False, index=True),
    # The task's place in its callback, so a vApp's VMs are listed in the order Abiquo sent them.
    Column("position", Integer(), nullable=False),
    Column("task_type", String(64), nullable=False),
    Column("user_id", String(64)),
    Column("owner_id", String(64)),
    Column("state", String(64)),
    Column("target_href", Text()),
    Column("user_href", Text()),
    Column("self_href", Text()),
    Column("continue_href", Text(), nullable=False),
    Column("cancel_href", Text(), nullable=False),
    Column("vm_name", Text()),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("decision", String(16), nullable=False, index=True),
    Column("decided_by", String(16)),
    Column("actor", Text()),
    Column("decided_at", UtcDateTime()),
    Column("reason", Text()),
    Column("channel", String(16)),
    Column("delivery", String(16), index=True),
    Column("delivery_detail", Text()),
    Column("delivery_attempts", Integer(), nullable=False),
    Column("delivered_at", UtcDateTime()),
    Column("abiquo_state", String(64)),
    # When triage read the task back from Abiquo and took its type, requester, target and links from
    # Abiquo's answer (None until then, and for a rejected task).
    Column("verified_at", UtcDateTime()),
    _one_of("decision", DecisionState),
    _one_of("delivery", DeliveryState, nullable=True),
    # A decision comes before its delivery: a pending task has nothing to deliver.
    CheckConstraint("delivery IS NULL OR decision <> 'pending'", name="delivery_after_decision"),
    # How many tasks are pending and since when (`/metrics`): a range of this index, read in order.
    Index(None, "decision", "created_at"),
    # The listings' order, newest first with ties by id, alone and after a decision (store/listing.py).
    Index(None, "created_at", "task_id"),
    Index(None, "decision", "created_at", "task_id"),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("request_id", String(36), ForeignKey("requests.id"), nullable=False, index=True),
    Column("task_ids", _json()),
    Column("kind", String(32), nullable=False),
    Column("recipient", Text(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("last_error", Text()),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("sent_at", UtcDateTime()),
    _one_of("status", NotificationStatus),
)

# No foreign keys: the log keeps what happened even about tasks we never stored (a forged link, say).
audit = Table(
    "audit",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("request_id", String(36), index=True),
    Column("task_id", String(255), index=True),
    Column("actor", Text()),
    Column("action", String(64), nullable=False),
    Column("channel", String(16)),
    Column("detail", Text()),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("kind", String(64), nullable=False),
    Column("payload", _json(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("max_attempts", Integer(), nullable=False),
    Column("run_after", UtcDateTime(), nullable=False),
    # Lower is claimed first; `claim_rank` is run_after in milliseconds since the epoch plus priority *
    # the ageing step, the order claims take (queue.py says why). The defaults are for 0.2 processes,
    # which insert jobs without them during a rolling upgrade (migration 0003): such jobs rank first.
    Column("priority", Integer(), nullable=False, server_default="0"),
    Column("claim_rank", BigInteger(), nullable=False, server_default="0"),
    Column("locked_by", String(255)),
    Column("locked_until", UtcDateTime()),
    Column("last_error", Text()),
    # Unique when set; NULLs never collide (on SQLite and PostgreSQL alike), so most jobs carry none.
    Column("dedupe_key", String(255), unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime()),
    _one_of("status", JobStatus),
    Index(None, "status", "claim_rank", "id"),
)

# Each approver's answer on a task (migration 0005): an accept counts towards `approvals_needed`, a
# decline vetoes. One row per task, approver (lower-cased email) and answer, so a second click by the
# same approver counts once.
approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("task_id", String(255), ForeignKey("tasks.task_id"), nullable=False),
    Column("request_id", String(36), nullable=False, index=True),
    Column("approver", String(320), nullable=False),
    Column("actor", Text(), nullable=False),
    Column("action", String(16), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("channel", String(16)),
    Column("reason", Text()),
    UniqueConstraint("task_id", "approver", "action"),
)

# One row per running worker, its heartbeat: when its loop last went round (worker.py). `/readyz` of a
# process without a worker of its own (`serve --no-worker`) asks whether any worker beat lately.
workers = Table(
    "workers",
    metadata,
    Column("worker_id", String(255), primary_key=True),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("beat_at", UtcDateTime(), nullable=False),
)
