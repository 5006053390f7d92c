"""Email: render approval and outcome messages, send them over SMTP, and a local inbox to read them."""

from __future__ import annotations

from abiquo_workflow.mail.inbox import Inbox, ReceivedMessage, inbox_app
from abiquo_workflow.mail.model import ActionLinks, ApprovalRequest, OutcomeNotice, TaskResult
from abiquo_workflow.mail.render import render_approval, render_outcome, render_test
from abiquo_workflow.mail.send import Mailer, send_test_email

__all__ = [
    "ActionLinks",
    "ApprovalRequest",
    "Inbox",
    "Mailer",
    "OutcomeNotice",
    "ReceivedMessage",
    "TaskResult",
    "inbox_app",
    "render_approval",
    "render_outcome",
    "render_test",
    "send_test_email",
]
