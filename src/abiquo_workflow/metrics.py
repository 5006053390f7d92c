"""Prometheus counters, served at `/metrics`. Names start with `awf_`; labels are small closed sets."""

from __future__ import annotations

from prometheus_client import Counter

CALLBACKS = Counter(
    "awf_callbacks", "Callbacks from Abiquo, by outcome (stored, known, refused)", ["outcome"]
)
DECISIONS = Counter("awf_decisions", "Tasks decided, by decision and channel", ["decision", "channel"])
DELIVERIES = Counter("awf_deliveries", "Decisions settled with Abiquo, by delivery state", ["state"])
EMAILS = Counter(
    "awf_emails", "Emails, by kind (approval, outcome) and outcome (sent, failed)", ["kind", "outcome"]
)
TASKS_REJECTED = Counter(
    "awf_tasks_rejected",
    "Callback tasks Abiquo does not hold as described, by reason "
    "(bad_href, not_found, other_task, not_held, no_type, mixed)",
    ["reason"],
)
JOBS_DEAD = Counter("awf_jobs_dead", "Jobs that ran out of attempts, by kind", ["kind"])
