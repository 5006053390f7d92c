"""Signed, expiring, approver-bound action links.

A link in an approval email carries a token signed with `server.secret_key`. The token binds:

- the exact set of task ids the link acts on (as a digest of the sorted ids encoded as a JSON list, so
  that no two sets share an encoding and a 100-VM "accept all" link stays short),
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

    def verify(
        self, token: str | None, task_ids: Sequence[str], action: Action, *, now: float | None = None
    ) -> Grant:
        """Check `token` for exactly these tasks and this action, or raise `TokenError` saying why."""
        if not token:
            raise TokenError("This link has no token. Open the link exactly as it appears in the email.")
        if not task_ids:
            raise TokenError("This link names no task.")
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
        if not isinstance(payload, dict) or not {"h", "a", "p", "e"} <= payload.keys():
            raise TokenError("This link is not valid: its token is incomplete.")
        expires = payload["e"]
        # A signature only proves the token is ours; its fields are still checked before use.
        if isinstance(expires, bool) or not isinstance(expires, int) or not 0 <= expires < _LATEST_EXPIRY:
            raise TokenError("This link is not valid: its expiry cannot be read.")
        if payload["h"] != _digest(task_ids):
            raise TokenError("This link was made for other tasks than the ones it names.")
        if payload["a"] != action.value:
            raise TokenError(f"This link was made to {payload['a']}, not to {action.value}.")
        expires_at = datetime.fromtimestamp(expires, UTC)
        if (time.time() if now is None else now) > expires:
            raise TokenError(
                f"This link expired on {expires_at:%Y-%m-%d %H:%M} UTC. "
                "Ask for the request to be sent again, or decide in Abiquo."
            )
        return Grant(tuple(task_ids), action, str(payload["p"]), expires_at)

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
        """`/multiple?action=accept|cancel&tasks=a,b&token=…` for several tasks at once."""
        word = "accept" if action is Action.ACCEPT else "cancel"
        query = urlencode(
            {"action": word, "tasks": ",".join(task_ids), "token": self.token(task_ids, action, approver)},
            safe=",",
        )
        return f"{self._base_url}/multiple?{query}"
