"""Signed, expiring, approver-bound action links.

A link in an approval email carries a token signed with `server.secret_key`. The token binds:

- the exact set of task ids the link acts on: for a link to one task, a digest of the ids encoded as a
  JSON list (so that no two sets share an encoding); for an email's "accept all" / "decline all", the
  id of the approval email's notification, whose task list the store keeps and never changes (so that
  the link of a 100-VM request is as short as the link of one, `notice_url`),
- the action (accept or decline),
- the approver it was sent to (so we know who decided),
- an expiry time.

A task id alone, which the requester can see in Abiquo, is worth nothing: without a token that verifies
for that task set and action, nothing is shown and nothing is decided. Tokens are not secret from the
person holding them (they are signed, not encrypted); they hold no more than the email itself shows.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer

from abiquo_workflow.domain import Action
from abiquo_workflow.exceptions import TokenError

# Changing the salt invalidates every link already sent; bump the suffix only on purpose.
_SALT = "abiquo-workflow/action-link/v2"
#: Links of releases before 0.2, whose digest joined the ids with commas: a task id holding a comma
#: could stretch such a link over another task. They are recognised only to say so.
_RETIRED_SALTS = ("abiquo-workflow/action-link/v1",)

#: No link lives past the year 9999 (datetime's limit); a larger expiry is not one we wrote.
_LATEST_EXPIRY = 253_402_300_800

#: `/multiple?action=` values. docs/design.md names the decline action `cancel` on this route, after the
#: task's Abiquo link; `decline` is accepted too.
MULTIPLE_ACTIONS: dict[str, Action] = {
    "accept": Action.ACCEPT,
    "cancel": Action.DECLINE,
    "decline": Action.DECLINE,
}


@dataclass(frozen=True, slots=True)
class NoticeGrant:
    """What a verified notice token allows: `approver` may take `action` on the tasks of approval email
    `notice_id` (as the store lists them)."""

    notice_id: int
    action: Action
    approver: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: `approver` may take `action` on exactly `task_ids`."""

    task_ids: tuple[str, ...]
    action: Action
    approver: str
    expires_at: datetime


def _digest(task_ids: Iterable[str]) -> str:
    """A digest of the set of ids: a JSON list is unambiguous whatever characters the ids hold."""
    encoded = json.dumps(sorted(set(task_ids)), ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()[:32]


def parse_task_list(raw: str) -> tuple[str, ...]:
    """`a,b, c` → ("a", "b", "c"), duplicates and blanks dropped, order kept."""
    seen: dict[str, None] = {}
    for part in raw.split(","):
        if part.strip():
            seen.setdefault(part.strip(), None)
    return tuple(seen)


class LinkSigner:
    """Makes and checks action links.

    Parameters
    ----------
    secret_key:
        `server.secret_key`. Anyone holding it can forge links, so it never leaves the configuration.
    base_url:
        Where people reach us (`server.public_url`), without a trailing slash.
    ttl:
        Seconds a link stays valid (`links.ttl`).
    """

    def __init__(self, secret_key: str, base_url: str, ttl: int) -> None:
        if not secret_key:
            raise ValueError("a secret key is required to sign links")
        self._serializer = URLSafeSerializer(secret_key, salt=_SALT)
        self._retired = [URLSafeSerializer(secret_key, salt=salt) for salt in _RETIRED_SALTS]
        self._base_url = base_url.rstrip("/")
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"LinkSigner(base_url={self._base_url!r}, ttl={self.ttl})"

    def token(
        self, task_ids: Sequence[str], action: Action, approver: str, *, now: float | None = None
    ) -> str:
        expires = int((time.time() if now is None else now) + self.ttl)
        payload = {"h": _digest(task_ids), "a": action.value, "p": approver, "e": expires}
        return str(self._serializer.dumps(payload))

    def notice_token(self, notice_id: int, action: Action, approver: str, *, now: float | None = None) -> str:
        """A token for every task of the approval email `notice_id` (its notification's id)."""
        expires = int((time.time() if now is None else now) + self.ttl)
        payload = {"n": notice_id, "a": action.value, "p": approver, "e": expires}
        return str(self._serializer.dumps(payload))

    def verify(
        self, token: str | None, task_ids: Sequence[str], action: Action, *, now: float | None = None
    ) -> Grant:
        """Check `token` for exactly these tasks and this action, or raise `TokenError` saying why."""
        if not task_ids:
            raise TokenError("This link names no task.")
        payload = self._checked(token, "h", action, now)
        if payload["h"] != _digest(task_ids):
            raise TokenError("This link was made for other tasks than the ones it names.")
        return Grant(tuple(task_ids), action, str(payload["p"]), _expiry(payload))

    def verify_notice(
        self, token: str | None, notice_id: int, action: Action, *, now: float | None = None
    ) -> NoticeGrant:
        """Check `token` for the tasks of approval email `notice_id` and this action, or raise
        `TokenError`. The caller reads that email's task list from the store and checks its recipient."""
        payload = self._checked(token, "n", action, now)
        if isinstance(payload["n"], bool) or payload["n"] != notice_id:
            raise TokenError("This link was made for other tasks than the ones it names.")
        return NoticeGrant(notice_id, action, str(payload["p"]), _expiry(payload))

    def _checked(self, token: str | None, binding: str, action: Action, now: float | None) -> dict[str, Any]:
        """The token's payload once its signature, fields, action and expiry are checked; `binding` is
        the field that names the tasks ("h" for a digest, "n" for an approval email), left to the caller."""
        if not token:
            raise TokenError("This link has no token. Open the link exactly as it appears in the email.")
        try:
            payload = self._serializer.loads(token)
        except BadSignature:
            if self._is_retired(token):
                raise TokenError(
                    "This link was made by an earlier version of abiquo-workflow, whose links are no longer "
                    "accepted. Decide in Abiquo's Workflow tasks tab, or ask your administrator."
                ) from None
            raise TokenError(
                "This link is not valid: it was altered, or it was made by another installation."
            ) from None
        if not isinstance(payload, dict) or not {"a", "p", "e"} <= payload.keys():
            raise TokenError("This link is not valid: its token is incomplete.")
        if binding not in payload:
            # A one-task token under a notice link, or the reverse: signed by us, but not for this link.
            raise TokenError("This link was made for other tasks than the ones it names.")
        expires = payload["e"]
        # A signature only proves the token is ours; its fields are still checked before use.
        if isinstance(expires, bool) or not isinstance(expires, int) or not 0 <= expires < _LATEST_EXPIRY:
            raise TokenError("This link is not valid: its expiry cannot be read.")
        if payload["a"] != action.value:
            raise TokenError(f"This link was made to {payload['a']}, not to {action.value}.")
        if (time.time() if now is None else now) > expires:
            raise TokenError(
                f"This link expired on {_expiry(payload):%Y-%m-%d %H:%M} UTC. "
                "Ask for the request to be sent again, or decide in Abiquo."
            )
        return payload

    def _is_retired(self, token: str) -> bool:
        for serializer in self._retired:
            try:
                serializer.loads(token)
            except BadSignature:
                continue
            return True
        return False

    def expires_at(self, *, now: float | None = None) -> datetime:
        """When a link made now stops working."""
        return datetime.fromtimestamp(int((time.time() if now is None else now) + self.ttl), UTC)

    def task_url(self, task_id: str, action: Action, approver: str) -> str:
        """`/accept?task=…&token=…` or `/decline?task=…&token=…` for one task."""
        query = urlencode({"task": task_id, "token": self.token([task_id], action, approver)})
        return f"{self._base_url}/{action.value}?{query}"

    def multiple_url(self, task_ids: Sequence[str], action: Action, approver: str) -> str:
        """`/multiple?action=accept|cancel&tasks=a,b&token=…` for several tasks at once.

        The emails of 0.2 carried these; `/multiple` still takes them. New emails use `notice_url`.
        """
        query = urlencode(
            {
                "action": _word(action),
                "tasks": ",".join(task_ids),
                "token": self.token(task_ids, action, approver),
            },
            safe=",",
        )
        return f"{self._base_url}/multiple?{query}"

    def notice_url(self, notice_id: int, action: Action, approver: str) -> str:
        """`/multiple?action=accept|cancel&notice=42&token=…`: every task of approval email 42."""
        query = urlencode(
            {
                "action": _word(action),
                "notice": notice_id,
                "token": self.notice_token(notice_id, action, approver),
            }
        )
        return f"{self._base_url}/multiple?{query}"


def _word(action: Action) -> str:
    """The `/multiple?action=` value of `action`."""
    return "accept" if action is Action.ACCEPT else "cancel"


def _expiry(payload: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(payload["e"], UTC)
