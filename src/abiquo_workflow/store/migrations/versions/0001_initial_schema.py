"""Initial schema: requests, tasks, notifications, audit and jobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations are snapshots: they spell types out rather than import them from tables.py, which moves on.
UtcDateTime = sa.DateTime(timezone=True)
Json = sa.JSON(none_as_null=True)


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("received_at", UtcDateTime, nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("single_root", sa.Boolean(), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=255), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("requester_id", sa.String(length=64), nullable=True),
        sa.Column("requester_href", sa.Text(), nullable=True),
        sa.Column("details", Json, nullable=True),
        sa.Column("approvers", Json, nullable=True),
        sa.Column("triaged_at", UtcDateTime, nullable=True),
        sa.Column("triage_error", sa.Text(), nullable=True),
        sa.CheckConstraint("format IN ('xml', 'json')", name=op.f("ck_requests_format")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("task_type", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("owner_id", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=64), nullable=True),
        sa.Column("target_href", sa.Text(), nullable=True),
        sa.Column("user_href", sa.Text(), nullable=True),
        sa.Column("self_href", sa.Text(), nullable=True),
        sa.Column("continue_href", sa.Text(), nullable=False),
        sa.Column("cancel_href", sa.Text(), nullable=False),
        sa.Column("vm_name", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=16), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("decided_at", UtcDateTime, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("delivery", sa.String(length=16), nullable=True),
        sa.Column("delivery_detail", sa.Text(), nullable=True),
        sa.Column("delivery_attempts", sa.Integer(), nullable=False),
        sa.Column("delivered_at", UtcDateTime, nullable=True),
        sa.Column("abiquo_state", sa.String(length=64), nullable=True),
        sa.CheckConstraint("decision IN ('pending', 'accepted', 'declined')", name=op.f("ck_tasks_decision")),
        sa.CheckConstraint(
            "delivery IS NULL OR delivery IN ('queued', 'delivered', 'superseded', 'failed')",
            name=op.f("ck_tasks_delivery"),
        ),
        sa.CheckConstraint(
            "delivery IS NULL OR decision <> 'pending'", name=op.f("ck_tasks_delivery_after_decision")
        ),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"], name=op.f("fk_tasks_request_id_requests")),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_tasks")),
    )
    op.create_index(op.f("ix_tasks_request_id"), "tasks", ["request_id"])
    op.create_index(op.f("ix_tasks_decision"), "tasks", ["decision"])
    op.create_index(op.f("ix_tasks_delivery"), "tasks", ["delivery"])

    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("task_ids", Json, nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("sent_at", UtcDateTime, nullable=True),
        sa.CheckConstraint("status IN ('queued', 'sent', 'failed')", name=op.f("ck_notifications_status")),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name=op.f("fk_notifications_request_id_requests")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index(op.f("ix_notifications_request_id"), "notifications", ["request_id"])

    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=True),
        sa.Column("task_id", sa.String(length=255), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    op.create_index(op.f("ix_audit_request_id"), "audit", ["request_id"])
    op.create_index(op.f("ix_audit_task_id"), "audit", ["task_id"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", UtcDateTime, nullable=False),
        sa.Column("locked_by", sa.String(length=255), nullable=True),
        sa.Column("locked_until", UtcDateTime, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("finished_at", UtcDateTime, nullable=True),
        sa.CheckConstraint("status IN ('queued', 'running', 'done', 'dead')", name=op.f("ck_jobs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_jobs_dedupe_key")),
    )
    op.create_index(op.f("ix_jobs_status_run_after"), "jobs", ["status", "run_after"])


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("audit")
    op.drop_table("notifications")
    op.drop_table("tasks")
    op.drop_table("requests")
