"""Each approver's answer on a task, for quorums (`approvals_needed`).

`approvals` holds one row per task, approver and answer (accept or decline): the accepts of distinct
approvers are counted against the rule's `approvals_needed`, and a decline vetoes. Only adds a table:
processes of 0.3 keep working on the migrated schema during a rolling upgrade (they neither write nor
read it, and decide on the first answer as before).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations are snapshots: they spell types out rather than import them from tables.py, which moves on.
UtcDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("approver", sa.String(length=320), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.task_id"], name=op.f("fk_approvals_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint(
            "task_id", "approver", "action", name=op.f("uq_approvals_task_id_approver_action")
        ),
    )
    op.create_index(op.f("ix_approvals_request_id"), "approvals", ["request_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_approvals_request_id"), table_name="approvals")
    op.drop_table("approvals")
