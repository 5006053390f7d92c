"""Tasks are verified with Abiquo before triage: a `verified_at` time, and the `rejected` decision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UtcDateTime = sa.DateTime(timezone=True)

_BEFORE = "decision IN ('pending', 'accepted', 'declined')"
_AFTER = "decision IN ('pending', 'accepted', 'declined', 'rejected')"


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("verified_at", UtcDateTime, nullable=True))
        batch.drop_constraint(op.f("ck_tasks_decision"), type_="check")
        batch.create_check_constraint(op.f("ck_tasks_decision"), _AFTER)


def downgrade() -> None:
    # A rejected task was never decided: it goes back to pending, which the old code understands.
    op.execute(
        "UPDATE tasks SET decision = 'pending', decided_by = NULL, actor = NULL, decided_at = NULL, "
        "reason = NULL, channel = NULL WHERE decision = 'rejected'"
    )
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint(op.f("ck_tasks_decision"), type_="check")
        batch.create_check_constraint(op.f("ck_tasks_decision"), _BEFORE)
        batch.drop_column("verified_at")
