"""Who is looking, and what they may see and decide: the dashboard's and the API's access rules.

People sign in with their Abiquo credentials, checked against Abiquo's `GET /login` as that person; no
password is stored, and a successful check is trusted for `access.login_ttl` seconds (keyed by a
salted hash of the credentials, in memory only), so an API client sending Basic credentials on every
call costs Abiquo one login a minute. What a person may do follows their Abiquo role:

- a role of `access.admin_roles` (CLOUD_ADMIN: docs/protocol.md §7.3) sees every request and decides
  any;
- a role that approves under the policy (`policy.approver_role` or a rule's `approver_roles`, as
  directory.py and policy.py decide who is asked), held by a user with an email address, sees the
  requests of their enterprise and decides them; at decision time the approver check of an emailed
  link is made again (`Approvals.check_approver`), so a rule that names other roles for a request, or a
  role taken away since, still counts;
- anyone else sees their own requests (in their enterprise), read-only.

API tokens (`[[api.tokens]]`, kept as SHA-256 digests) see everything; those of scope `decide` may
decide and retry too. The audit log names people as `Name <email>`, as an emailed link's decision does,
and tokens as `token:<name>`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from abiquo_workflow.abiquo.cache import ReadCache
from abiquo_workflow.abiquo.client import AbiquoClient
from abiquo_workflow.approvals import approver_address
from abiquo_workflow.config import Settings
from abiquo_workflow.domain import DecisionState, User
from abiquo_workflow.exceptions import AbiquoAuthError
from abiquo_workflow.policy import holds_role
from abiquo_workflow.store.listing import Scope


class Role(enum.StrEnum):
    """What a viewer is to the connector (not an Abiquo role name)."""

    ADMIN = "admin"
    APPROVER = "approver"
    REQUESTER = "requester"


class Owned(Protocol):
    """Anything a viewer may or may not see: a request's or task's listing row, a request, a timeline."""

    @property
    def enterprise_id(self) -> str | None: ...

    @property
    def requester_id(self) -> str | None: ...


@dataclass(frozen=True)
class Viewer:
    """A signed-in person or an API token. Rebuild one from its fields (a session cookie keeps them).

    `enterprise_hrefs` are Abiquo enterprise hrefs (`admin/enterprises/{id}`, as the connector writes
    them): for an approver the enterprises they see and decide in, for a requester their own.
    """

    actor: str
    role: Role
    user_href: str | None = None
    enterprise_hrefs: frozenset[str] = frozenset()
    can_decide: bool = False
    #: The Abiquo user's id (a requester sees the requests whose requester it is).
    user_id: str | None = None

    def __post_init__(self) -> None:
        # A session may hand back a list or tuple; keep a frozenset so Viewers compare and hash alike.
        object.__setattr__(self, "enterprise_hrefs", frozenset(self.enterprise_hrefs))
        object.__setattr__(self, "role", Role(self.role))

    @property
    def enterprise_ids(self) -> frozenset[str]:
        """The ids at the end of `enterprise_hrefs` (what the store keeps as `requests.enterprise_id`)."""
        return frozenset(href.rstrip("/").rpartition("/")[2] for href in self.enterprise_hrefs)

    @property
    def scope(self) -> Scope:
        """The listings' scope for this viewer (store/listing.py)."""
        if self.role is Role.ADMIN:
            return Scope()
        if self.role is Role.APPROVER:
            return Scope(enterprise_ids=self.enterprise_ids)
        return Scope(enterprise_ids=self.enterprise_ids, requester_id=self.user_id or "")

    def sees(self, item: Owned) -> bool:
        """Whether this viewer may see a request or task (anything with `enterprise_id` and
        `requester_id`: `RequestSummary`, `ListedTask`, `RequestTimeline`, `RequestRecord`)."""
        if self.role is Role.ADMIN:
            return True
        if item.enterprise_id is None or item.enterprise_id not in self.enterprise_ids:
            return False
        return self.role is Role.APPROVER or (self.user_id is not None and item.requester_id == self.user_id)

    def may_decide(self, item: Owned) -> bool:
        """Whether this viewer may decide it: sees it, may decide at all, and it is still pending (when it
        is a task's row, `ListedTask`). An approver never decides their own request (separation of
        duties: the policy asked the other approvers); an administrator may. An approver's check
        against Abiquo is made again at decision time."""
        if not (self.can_decide and self.sees(item)):
            return False
        if self.role is Role.APPROVER and self.user_id is not None and item.requester_id == self.user_id:
            return False
        task = getattr(item, "task", item)
        decision = getattr(task, "decision", DecisionState.PENDING)
        return bool(decision is DecisionState.PENDING)


def token_digest(token: str) -> str:
    """What `[[api.tokens]].sha256` holds for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random API token (`abiquo-workflow api-token`)."""
    return "awf_" + secrets.token_urlsafe(32)


def enterprise_href(enterprise_id: str) -> str:
    return f"admin/enterprises/{enterprise_id}"


class Authenticator:
    """Turns credentials into a `Viewer`: Abiquo users through `/login`, API tokens through the config.

    Parameters
    ----------
    abiquo:
        An open client; `login` asks Abiquo as the person signing in.
    settings:
        `access.*` (admin roles, how long a sign-in is trusted), `policy.*` (who approves), `api.tokens`.
    clock:
        Monotonic seconds; tests pass their own.
    """

    def __init__(
        self, abiquo: AbiquoClient, settings: Settings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._abiquo = abiquo
        self._settings = settings
        self._signed_in = ReadCache(settings.access.login_ttl, clock=clock)
        #: Salts the cache's keys: they are never a plain hash of someone's password.
        self._salt = secrets.token_bytes(32)
        self._approver_roles = _approver_roles(settings)
        self._tokens = {token.sha256: token for token in settings.api.tokens}

    async def sign_in(self, username: str, password: str) -> Viewer | None:
        """The viewer these Abiquo credentials belong to; None when Abiquo refuses them.

        Raises `AbiquoError` when Abiquo cannot be asked (unreachable, or an answer we cannot read).
        """
        if not username or not password:
            return None
        key = hmac.new(self._salt, f"{username}\0{password}".encode(), hashlib.sha256).hexdigest()

        async def login() -> Viewer:
            try:
                return self.viewer_of(await self._abiquo.login(username, password))
            except AbiquoAuthError as exc:
                raise _Refused from exc

        try:
            return await self._signed_in.get(key, login)
        except _Refused:
            return None  # not remembered: the next try asks Abiquo again

    def viewer_of(self, user: User) -> Viewer:
        """The Viewer an Abiquo user is (their role decides: the module docstring)."""
        if not user.active:
            role = Role.REQUESTER
        elif any(holds_role(user, admin) for admin in self._settings.access.admin_roles):
            role = Role.ADMIN
        elif user.email and any(holds_role(user, approver) for approver in self._approver_roles):
            role = Role.APPROVER
        else:
            role = Role.REQUESTER
        return Viewer(
            actor=approver_address(user),
            role=role,
            user_href=user.href,
            enterprise_hrefs=frozenset({enterprise_href(user.enterprise_id)} if user.enterprise_id else ()),
            can_decide=role is not Role.REQUESTER,
            user_id=user.id,
        )

    def token_viewer(self, token: str) -> Viewer | None:
        """The viewer an API token is; None for a token not configured."""
        digest = token_digest(token)
        for known, configured in self._tokens.items():
            if hmac.compare_digest(known, digest):
                return Viewer(
                    actor=f"token:{configured.name}", role=Role.ADMIN, can_decide=configured.scope == "decide"
                )
        return None


def _approver_roles(settings: Settings) -> tuple[str, ...]:
    """Every role that approves under some policy rule (the default rule's and the rules' own)."""
    roles: Iterable[str] = (settings.policy.approver_role,)
    for rule in settings.policy.rules:
        if rule.decide is None and rule.approver_roles is not None:
            roles = (*roles, *rule.approver_roles)
    return tuple(dict.fromkeys(roles))


class _Refused(Exception):
    """Abiquo refused the credentials: raised through the cache, which keeps no error."""
