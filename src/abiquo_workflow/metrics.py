"""Prometheus metrics, served at `/metrics`. Names start with `awf_`; labels are small closed sets.

Counters and histograms are updated where things happen. The gauges of what the store holds (pending
tasks, the oldest one's age, unfinished jobs) are set from the store when `/metrics` is scraped
(web/health.py), so they are as fresh as the scrape and cost nothing in between.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
RECONCILE_RUNS = Counter(
    "awf_reconcile_runs",
    "Reconciliation runs with Abiquo, by outcome (done; failed: Abiquo could not be read, nothing changed)",
    ["outcome"],
)
RECONCILED_TASKS = Counter(
    "awf_reconciled_tasks",
    "Tasks reconciliation mended, by action (received: held in Abiquo, its callback never reached us; "
    "closed: settled in Abiquo while pending here)",
    ["action"],
)
JOBS_DEAD = Counter("awf_jobs_dead", "Jobs that ran out of attempts, by kind", ["kind"])
JOB_RETRIES = Counter(
    "awf_job_retries", "Failed job runs scheduled to run again after a backoff, by kind", ["kind"]
)

# --- Set from the store at each scrape ---------------------------------------------------------------

PENDING_TASKS = Gauge("awf_pending_tasks", "Tasks waiting for a decision, in the whole store")
OLDEST_PENDING_AGE = Gauge(
    "awf_oldest_pending_task_age_seconds",
    "Seconds since the oldest task still waiting for a decision was received (0 when none waits)",
)
JOBS = Gauge(
    "awf_jobs",
    "Unfinished jobs in the store, by kind and state (queued, running, dead); done jobs are not counted",
    ["kind", "state"],
)

# --- Latencies ---------------------------------------------------------------------------------------

#: From a second to a week: an automatic decision takes a moment, a person minutes to days.
_DECISION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)

TIME_TO_DECISION = Histogram(
    "awf_time_to_decision_seconds",
    "Seconds from receiving a task to deciding it, by who decided (approver, policy, no_approver, "
    "verification)",
    ["decided_by"],
    buckets=_DECISION_BUCKETS,
)
ABIQUO_REQUESTS = Histogram(
    "awf_abiquo_request_duration_seconds",
    "Seconds per Abiquo API request (each attempt), by method and status class "
    "(2xx, 3xx, 4xx, 5xx, or error: no answer)",
    ["method", "status_class"],
)
SMTP_SENDS = Histogram(
    "awf_smtp_send_duration_seconds",
    "Seconds per email handed to the SMTP relay (a fresh session's connection included), by outcome "
    "(sent; refused: a 5xx refusal; failed: anything else)",
    ["outcome"],
)


def status_class(status: int | None) -> str:
    """`2xx` for 204 and so on; `error` when there was no answer at all (None)."""
    if status is None or not 100 <= status <= 599:
        return "error"
    return f"{status // 100}xx"
