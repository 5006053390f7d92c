"""Jobs are claimed by priority, with ageing: each job's `priority` and `claim_rank`, and their index.

Jobs already stored get the priority of their kind and the rank that gives them. 0.2 processes still
running during a rolling upgrade keep working: they insert jobs without the new columns (the defaults,
0, rank those first), and their claims find queued jobs through the new index's first column. The old
(status, run_after) index goes: beside the new one, SQLite's planner took it for the claim and sorted
every due job at each claim instead of walking the new index in order.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The priority of each job kind, as jobs.Priority had them when this was written.
_SET_PRIORITY = (
    "UPDATE jobs SET priority = CASE kind WHEN 'deliver' THEN 0 WHEN 'send_approval' THEN 1"
    " WHEN 'triage' THEN 2 WHEN 'notify_requester' THEN 3 ELSE 0 END"
)
#: run_after in milliseconds since the epoch, plus the priority times the ageing step (30 s). SQLite
#: keeps run_after as naive UTC text, which julianday() reads.
_SET_CLAIM_RANK = {
    "sqlite": "UPDATE jobs SET claim_rank = priority * 30000"
    " + CAST(ROUND((julianday(run_after) - 2440587.5) * 86400000) AS INTEGER)",
    "postgresql": "UPDATE jobs SET claim_rank = priority * 30000"
    " + CAST(ROUND(EXTRACT(EPOCH FROM run_after) * 1000) AS BIGINT)",
}


def upgrade() -> None:
    op.add_column("jobs", sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("claim_rank", sa.BigInteger(), server_default="0", nullable=False))
    op.execute(_SET_PRIORITY)
    op.execute(_SET_CLAIM_RANK[op.get_bind().dialect.name])
    op.create_index(op.f("ix_jobs_status_claim_rank_id"), "jobs", ["status", "claim_rank", "id"])
    op.drop_index(op.f("ix_jobs_status_run_after"), table_name="jobs")


def downgrade() -> None:
    op.create_index(op.f("ix_jobs_status_run_after"), "jobs", ["status", "run_after"])
    op.drop_index(op.f("ix_jobs_status_claim_rank_id"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claim_rank")
        batch.drop_column("priority")
