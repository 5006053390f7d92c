"""Who approves an enterprise right now, read from Abiquo and kept for a short while.

An emailed link names the approver it was sent to and stays valid for `links.ttl` (a week by default).
An approver who loses the approver role meanwhile (moved to another team, or leaving) must not decide
with it: at decision time the approver must still be, in Abiquo, an approver of the request's
enterprise as `policy` defines one (the role `policy.approver_role`, active, with an email address).

The enterprise's users are read once per `ttl` seconds (60 by default) and enterprise, so that a burst
of clicks costs one read; a role removed in Abiquo takes effect within that time. When Abiquo cannot be
reached the check cannot be made and the error propagates: nothing is decided (the page says to try
again), because a decision by someone who may no longer approve is worse than a delayed one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parseaddr

from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.config import PolicySettings
from abiquo_workflow.domain import User
from abiquo_workflow.policy import approvers_among

#: Seconds an enterprise's approvers are kept before Abiquo is asked again.
DEFAULT_TTL = 60.0


class ApproverDirectory:
    """The current approvers of each enterprise, by the enterprise's href; see the module docstring.

    Parameters
    ----------
    abiquo:
        An open client; the users are read with the connector's credentials.
    policy:
        Who counts as an approver (`policy.approver_role`).
    ttl:
        Seconds a list read from Abiquo is used before it is read again.
    clock:
        Monotonic seconds; tests pass their own.
    """

    def __init__(
        self,
        abiquo: AbiquoClient,
        policy: PolicySettings,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._abiquo = abiquo
        self._policy = policy
        self._ttl = ttl
        self._clock = clock
        self._known: dict[str, tuple[float, tuple[User, ...]]] = {}

    async def approvers(self, enterprise_href: str) -> tuple[User, ...]:
        """The enterprise's approvers now (at most `ttl` seconds old). Raises `AbiquoError`."""
        key = self._abiquo.resolve(enterprise_href)
        now = self._clock()
        known = self._known.get(key)
        if known is not None and now - known[0] < self._ttl:
            return known[1]
        users = await self._abiquo.enterprise_users(key)
        approvers = approvers_among(users, None, self._policy)
        self._known[key] = (now, approvers)
        return approvers

    async def is_approver(self, enterprise_href: str, address: str) -> bool:
        """Whether `address` (`Name <email>` or a bare email) is one of the enterprise's approvers."""
        email = parseaddr(address)[1].strip().lower()
        if not email:
            return False
        return any((user.email or "").lower() == email for user in await self.approvers(enterprise_href))
