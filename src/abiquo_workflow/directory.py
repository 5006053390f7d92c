"""Who approves an enterprise right now, read from Abiquo and kept for a short while.

An emailed link names the approver it was sent to and stays valid for `links.ttl` (a week by default).
An approver who loses the approver role meanwhile (moved to another team, or leaving) must not decide
with it: at decision time the approver must still be, in Abiquo, an approver of the request's
enterprise as the policy rule that applied to the request defines one (one of the rule's roles, active,
with an email address; or an address the rule names, as configured now). Triage keeps the rule's name
in the request's snapshot (`RequestDetails.policy_rule`).

The enterprise's users are read once per `ttl` seconds (60 by default) and enterprise, so that a burst
of clicks costs one read (concurrent clicks share it); a role removed in Abiquo takes effect within that
time. When Abiquo cannot be reached the check cannot be made and the error propagates: nothing is
decided (the page says to try again), because a decision by someone who may no longer approve is worse
than a delayed one.

Why a cache of its own, not triage's (`enrichment`, `abiquo.cache_ttl`). This check is the gate a link
must pass, so its lists are filled only by reads made for it, live (`cached=False`), and how old they
may be is this module's `ttl` alone, whatever `abiquo.cache_ttl` is set to. Were it to take the list
triage read to choose whom to email, the first click after the emails would be judged by that list:
an approver removed just after their email went out could then decide with it, where this check asks
Abiquo unless a click of the same enterprise already did within `ttl`. Clicks come at a person's
pace, so the extra read costs little: at most one per enterprise and `ttl`. The cache is of the same
kind (abiquo/cache.py): bounded, one read shared among concurrent misses, errors never kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parseaddr

from abiquo_workflow.abiquo.cache import ReadCache
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.config import PolicySettings
from abiquo_workflow.domain import User
from abiquo_workflow.policy import approval_rule, approvers_among

#: Seconds an enterprise's approvers are kept before Abiquo is asked again.
DEFAULT_TTL = 60.0


class ApproverDirectory:
    """The current approvers of each enterprise, by the enterprise's href; see the module docstring.

    Parameters
    ----------
    abiquo:
        An open client; the users are read with the connector's credentials.
    policy:
        Who counts as an approver: the roles and addresses of each policy rule (`policy.rules`, and the
        default rule's `policy.approver_role`).
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
        self._known = ReadCache(ttl, clock=clock)

    async def approvers(self, enterprise_href: str, rule: str | None = None) -> tuple[User, ...]:
        """The enterprise's users who approve under the policy rule named `rule` (the default rule when
        None) now: those with one of its roles (read at most `ttl` seconds ago). Raises `AbiquoError`."""
        key = self._abiquo.resolve(enterprise_href)

        async def read() -> tuple[User, ...]:
            return tuple(await self._abiquo.enterprise_users(key, cached=False))  # live: the docstring

        users = await self._known.get(key, read)
        return approvers_among(users, None, approval_rule(self._policy, rule).roles)

    async def is_approver(self, enterprise_href: str, address: str, rule: str | None = None) -> bool:
        """Whether `address` (`Name <email>` or a bare email) approves, now, a request of the enterprise
        to which the policy rule named `rule` applied (the default rule when None).

        An address the rule names (`approvers`, or `escalate_to`: those are emailed only once the
        request is escalated) approves as long as the rule, as configured now, still names it: such
        people need not be Abiquo users, and Abiquo is not asked about them. Anyone else must hold one
        of the rule's roles in the enterprise now. A rule that is gone from the configuration counts as
        the default rule (policy.approval_rule).
        """
        email = parseaddr(address)[1].strip().lower()
        if not email:
            return False
        approval = approval_rule(self._policy, rule)
        if approval.names(email) or approval.escalates_to(email):
            return True
        approvers = await self.approvers(enterprise_href, rule)
        return any((user.email or "").lower() == email for user in approvers)
