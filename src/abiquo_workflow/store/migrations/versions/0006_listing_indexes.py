"""The enterprise of each request as a column, and the indexes the dashboard's and the API's lists read.

`requests.enterprise_id` is what triage's snapshot says the request's enterprise is (the VM's, else the
requester's): the listings scope approvers and requesters to their enterprise with it, through an
index, rather than reading the JSON of every request. Rows triaged before this revision are filled
from their snapshots here. The indexes serve the listings' order (newest first, ties by id) with or
without a decision filter, so a page is a range of an index read in order (keyset paging).

Additive only: a 0.4 process keeps working on the migrated schema during a rolling upgrade; a request
such a process triages meanwhile has no `enterprise_id` (the listings then show it to administrators
and API tokens only) until triage runs on it again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("enterprise_id", sa.String(length=64), nullable=True))
    details = sa.table("requests", sa.column("details", sa.JSON()), sa.column("enterprise_id", sa.String()))
    enterprise = sa.func.coalesce(
        details.c.details[("enterprise", "id")].as_string(),
        details.c.details[("requester", "enterprise_id")].as_string(),
    )
    op.execute(details.update().where(details.c.details.is_not(None)).values(enterprise_id=enterprise))
    op.create_index(op.f("ix_requests_received_at_id"), "requests", ["received_at", "id"])
    op.create_index(
        op.f("ix_requests_enterprise_id_received_at_id"), "requests", ["enterprise_id", "received_at", "id"]
    )
    op.create_index(op.f("ix_tasks_created_at_task_id"), "tasks", ["created_at", "task_id"])
    op.create_index(
        op.f("ix_tasks_decision_created_at_task_id"), "tasks", ["decision", "created_at", "task_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_tasks_decision_created_at_task_id"), table_name="tasks")
    op.drop_index(op.f("ix_tasks_created_at_task_id"), table_name="tasks")
    op.drop_index(op.f("ix_requests_enterprise_id_received_at_id"), table_name="requests")
    op.drop_index(op.f("ix_requests_received_at_id"), table_name="requests")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("enterprise_id")
