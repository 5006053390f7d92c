"""Workers' heartbeats, and an index for counting pending tasks by age.

`workers` holds one row per running worker, with when its loop last went round: `/readyz` of a process
without a worker of its own (`serve --no-worker`) asks it whether any worker is alive. The index on
tasks (decision, created_at) lets `/metrics` count pending tasks and find the oldest from the index
alone. Both only add: processes of 0.2 keep working on the migrated schema during a rolling upgrade
(they neither write heartbeats nor read them).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations are snapshots: they spell types out rather than import them from tables.py, which moves on.
UtcDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(length=255), nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("beat_at", UtcDateTime, nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_tasks_decision_created_at"), "tasks", ["decision", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_tasks_decision_created_at"), table_name="tasks")
    op.drop_table("workers")
