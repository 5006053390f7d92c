"""The settings model, and loading it from a TOML file, the environment and a legacy `workflow.cfg`.

Precedence, highest first: environment variables `AWF_<SECTION>__<KEY>`, the TOML file, the legacy
`workflow.cfg`, the defaults below. Only the CLI calls `load_settings`; everything else receives the
`Settings` object (or one of its sections) as an argument.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from abiquo_workflow.domain import WORKFLOW_TASK_TYPES
from abiquo_workflow.exceptions import ConfigError

DEFAULT_CONFIG_FILE = Path("abiquo-workflow.toml")
ENV_PREFIX = "AWF_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _split_list(value: object) -> object:
    """Let list keys be written as one string too ("DEPLOY, UNDEPLOY"), as environment values are."""
    if isinstance(value, str):
        return tuple(part for part in value.replace(",", " ").split() if part)
    return value


class ServerSettings(_Section):
    bind: str = Field("127.0.0.1:8080", description="host:port the web server listens on")
    public_url: AnyHttpUrl | None = Field(
        None, description="base URL of the links in emails; defaults to http://<bind>"
    )
    secret_key: SecretStr | None = Field(
        None, description="signs the accept/decline links; required by `serve`"
    )
    callback_token: SecretStr | None = Field(
        None, description="shared secret /callback requires (path, ?token= or bearer)"
    )
    callback_allow: tuple[str, ...] = Field(
        (), description="CIDRs allowed to POST /callback; empty allows any source"
    )
    trusted_proxies: tuple[str, ...] = Field(
        (), description="CIDRs of reverse proxies whose X-Forwarded-For is believed; empty trusts none"
    )
    max_body: int = Field(1_048_576, gt=0, description="largest callback body accepted, bytes")
    max_tasks: int = Field(1_000, gt=0, description="most tasks one callback may hold")

    @field_validator("bind")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    _split_allow = field_validator("callback_allow", "trusted_proxies", mode="before")(_split_list)

    @field_validator("callback_allow", "trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network such as 10.0.0.0/8") from None
        return value

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        """Where people reach us, without a trailing slash."""
        if self.public_url is not None:
            return str(self.public_url).rstrip("/")
        return f"http://{self.bind}"


class DatabaseSettings(_Section):
    url: str = Field(
        "sqlite:///./abiquo-workflow.db",
        description="sqlite:///path or postgresql://user@host/db",
    )
    busy_timeout: float = Field(
        5.0, gt=0, description="SQLite: seconds a write waits for another process's lock before failing"
    )

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "sqlite+", "postgresql:", "postgresql+", "postgres:")):
            raise ValueError(f"expected a sqlite:/// or postgresql:// URL, got {value!r}")
        return value


class AbiquoSettings(_Section):
    api_url: AnyHttpUrl = Field(
        AnyHttpUrl("http://127.0.0.1:8081/api"),  # the simulator's default address
        description="Abiquo API root, for example https://abiquo.example.com/api",
    )
    username: str = Field("admin", description="API user (needs WORKFLOW_OVERRIDE on every tenant)")
    password: SecretStr = Field(SecretStr("xabiquo"), description="that user's password")
    verify_tls: bool = Field(True, description="verify the API's TLS certificate")
    api_version: str | None = Field(
        None, description="sent as '; version=X.Y' on media types, for example 3.10"
    )
    timeout: float = Field(10.0, gt=0, description="seconds per API request")
    max_connections: int = Field(20, gt=0, description="concurrent API requests at most")
    retries: int = Field(3, ge=0, description="extra attempts on 5xx and connection errors")
    cache_ttl: float = Field(
        30.0,
        ge=0,
        description="seconds triage reuses an enterprise, its users, VDCs, datacenters, vApps; 0 disables",
    )

    @property
    def base_url(self) -> str:
        return str(self.api_url).rstrip("/")


class MailSettings(_Section):
    smtp_host: str = Field("127.0.0.1", description="SMTP relay host")
    smtp_port: int = Field(25, gt=0, lt=65536, description="SMTP relay port")
    smtp_user: str | None = Field(None, description="SMTP login, if the relay needs one")
    smtp_password: SecretStr | None = Field(None, description="SMTP password")
    security: Literal["none", "starttls", "tls"] = Field(
        "none", description="none, starttls (upgrade) or tls (implicit, usually port 465)"
    )
    timeout: float = Field(10.0, gt=0, description="seconds per SMTP conversation step")
    max_connections: int = Field(
        4, gt=0, description="SMTP sessions open at once, each reused for consecutive messages"
    )
    sender: str = Field("abiquo-workflow@localhost", description="From: address of every message")
    approver_subject: str = Field(
        "Approve {action} of {target} for {requester_name}",
        description="subject of approval requests; {action}, {task_type}, {target}, {what}, {vms}, "
        "{count}, {vapp}, {vm}, {requester_name}, {requester}",
    )
    requester_subject: str = Field(
        "{task_type} of {what} {outcome} ({accepted} of {count})",
        description="subject of outcome emails; {task_type}, {action}, {outcome}, {accepted}, {declined}, "
        "{count}, {target}, {what}, {vms}, {vapp}, {vm}",
    )
    settled_subject: str = Field(
        "Settled: {action} of {target} for {requester_name}",
        description="subject of the email telling the other approvers a request is decided; the fields "
        "of approver_subject and {outcome}, {accepted}, {declined}",
    )
    templates: Path | None = Field(None, description="folder whose templates override ours")
    logo: Path | None = Field(None, description="image shown at the top of emails")


DefaultAction = Literal["accept", "cancel"]
RequesterIsApprover = Literal["ask", "accept", "cancel"]

#: Policy keys of later versions (README "Policy"): refused, in a rule or in `[policy]`, with a sentence
#: saying so rather than "unknown key", and never accepted to do nothing. None today.
NOT_YET_SUPPORTED: tuple[str, ...] = ()

#: A duration's units, in seconds: `90s`, `15m`, `4h`, `3d`, `2w`, or a sum such as `1d12h`.
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+[smhdw])+")
#: The longest duration taken (100 years): far from datetime's limits.
LONGEST_DURATION = 36_525 * 86400


def duration_seconds(text: str) -> int:
    """`90s`, `15m`, `4h`, `3d`, `2w` or a sum of them (`1d12h`) in seconds, `0` for no time at all;
    ValueError with a sentence otherwise."""
    given = text.strip().lower()
    if given == "0":
        return 0
    if not _DURATION.fullmatch(given):
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 4h, 3d or 1d12h")
    seconds = sum(int(n) * _DURATION_UNITS[unit] for n, unit in re.findall(r"(\d+)([smhdw])", given))
    if seconds > LONGEST_DURATION:
        raise ValueError(f"{text!r} is longer than 100 years")
    return seconds


def _duration(value: object) -> object:
    """A policy duration: `"90s"`, `"4h"`, `"3d"` (or a number of seconds) → seconds, at least 1."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "90s", "4h" or "3d"')
    if isinstance(value, str):
        value = duration_seconds(value)
    if isinstance(value, int) and value < 1:
        raise ValueError('a duration must be at least one second, such as "90s", "4h" or "3d"')
    return value


def _durations(value: object) -> object:
    if isinstance(value, str):
        value = _split_list(value)
    if isinstance(value, list | tuple):
        return tuple(_duration(v) for v in value)
    return value


def duration_words(seconds: int) -> str:
    """`3d`, `4h`, `1d12h`, `90s`: a duration as the configuration writes it."""
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


#: Binary units of a size (`max_ram`, `max_disk`), in megabytes: Abiquo's own unit.
_SIZE_UNITS = {"": 1, "m": 1, "mb": 1, "mib": 1, "g": 1024, "gb": 1024, "gib": 1024}
_SIZE_UNITS.update({"t": 1024 * 1024, "tb": 1024 * 1024, "tib": 1024 * 1024})
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def _megabytes(value: object) -> object:
    """`4096`, `"4096"`, `"4GB"`, `"1.5 GB"`, `"512MB"`, `"1TB"` → megabytes (1 GB = 1024 MB)."""
    if isinstance(value, bool):
        raise ValueError('expected a size in megabytes, such as 4096, or a string such as "4GB"')
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match and match.group(2) in _SIZE_UNITS:
            return round(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError('expected megabytes (4096) or a size with its unit, such as "4GB" or "512MB"')


def _one_or_more(value: object) -> object:
    """A single name or id, or a list of them, as a tuple of stripped strings (ids may be numbers)."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list | tuple):
        return tuple(
            str(v).strip() if isinstance(v, str | int) and not isinstance(v, bool) else v for v in value
        )
    return value


def _not_empty(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is not None:
        if not value:
            raise ValueError("an empty list matches nothing; leave the key out to match any")
        if any(not item for item in value):
            raise ValueError("an empty name matches nothing")
    return value


def _task_type_list(value: object) -> object:
    value = _split_list(value)
    if isinstance(value, list | tuple):
        return tuple(str(v).strip().upper() for v in value)
    return value


def _email_address(text: str) -> str | None:
    """The address of `alice@example.com` or `Alice Smith <alice@example.com>`, lower-cased; None when
    `text` is neither."""
    found = getaddresses([text])
    if len(found) != 1:
        return None
    address = found[0][1]
    local, at, domain = address.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in address):
        return None
    return address.lower()


def _address_list(value: object) -> object:
    """Addresses as a list, or one string of them separated by commas (as the environment gives them)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return _one_or_more(value)


def _checked_addresses(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    for item in value or ():
        if _email_address(item) is None:
            raise ValueError(f"{item!r} is not an email address (alice@example.com or Alice <alice@…>)")
    return value


#: The keys of a rule that asks people (a `decide` rule may have none of them).
APPROVAL_KEYS = (
    "approver_roles",
    "approvers",
    "when_requester_is_approver",
    "when_no_approver",
    "approvals_needed",
    "deadline",
    "at_deadline",
    "reminders",
    "escalate_after",
    "escalate_to",
)


class PolicyRule(_Section):
    """One `[[policy.rules]]` entry (README "Policy"): conditions, then `decide` or who approves.

    A condition left out matches any request; a rule without conditions matches every request. The
    approval keys a rule leaves out take the default rule's values (`policy.approver_role`,
    `policy.when_requester_is_approver`, `policy.when_no_approver`; no explicit addresses).
    """

    name: str = Field(min_length=1, max_length=100, description="the rule's name, unique")
    # --- conditions: all of those given must hold
    enterprise: tuple[str, ...] | None = Field(None, description="enterprise names or ids")
    task_types: tuple[str, ...] | None = Field(None, description="every gated task is of one of these types")
    vms: int | None = Field(None, ge=1, description="exactly this many VMs (tasks)")
    min_vms: int | None = Field(None, ge=1, description="at least this many VMs")
    max_vms: int | None = Field(None, ge=1, description="at most this many VMs")
    max_cpu: int | None = Field(None, ge=1, description="at most this many CPUs in all")
    max_ram: int | None = Field(None, ge=1, description="at most this much RAM in all, MB")
    max_disk: int | None = Field(None, ge=1, description="at most this much disk and volume in all, MB")
    requester_role: tuple[str, ...] | None = Field(None, description="the requester's role is one of these")
    datacenter: tuple[str, ...] | None = Field(None, description="datacenter names or ids")
    # --- what happens then: decide, or ask
    decide: DefaultAction | None = Field(None, description="accept or cancel without asking anyone")
    approver_roles: tuple[str, ...] | None = Field(None, description="roles whose users approve")
    approvers: tuple[str, ...] | None = Field(None, description="addresses that approve, Abiquo users or not")
    when_requester_is_approver: RequesterIsApprover | None = None
    when_no_approver: DefaultAction | None = None
    approvals_needed: int | None = Field(None, ge=1, description="distinct approvals that accept")
    deadline: int | None = Field(None, description="seconds after triage when at_deadline decides")
    at_deadline: DefaultAction | None = None
    reminders: tuple[int, ...] | None = Field(None, description="seconds after the approval email")
    escalate_after: int | None = Field(None, description="seconds after triage when escalate_to is asked")
    escalate_to: tuple[str, ...] | None = Field(None, description="addresses asked at escalate_after")

    _names = field_validator(
        "enterprise",
        "requester_role",
        "datacenter",
        "approver_roles",
        "approvers",
        "escalate_to",
        mode="before",
    )(_one_or_more)
    _deadline = field_validator("deadline", "escalate_after", mode="before")(_duration)
    _reminders = field_validator("reminders", mode="before")(_durations)
    _types = field_validator("task_types", mode="before")(_task_type_list)
    _sizes = field_validator("max_ram", "max_disk", mode="before")(_megabytes)

    @field_validator("name")
    @classmethod
    def _stripped(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a rule's name cannot be blank")
        return value.strip()

    @field_validator("enterprise", "requester_role", "datacenter", "task_types")
    @classmethod
    def _conditions(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _not_empty(value)

    @field_validator("task_types")
    @classmethod
    def _known_types(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = [t for t in value or () if t not in WORKFLOW_TASK_TYPES]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} is not a task type Abiquo holds ({', '.join(WORKFLOW_TASK_TYPES)})"
            )
        return value

    @field_validator("approver_roles")
    @classmethod
    def _roles(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and any(not role for role in value):
            raise ValueError("an empty role name")
        return value

    _addresses = field_validator("approvers", "escalate_to")(_checked_addresses)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyRule:
        asking = [key for key in APPROVAL_KEYS if getattr(self, key) is not None]
        if self.decide is not None and asking:
            raise ValueError(
                f"decide = {self.decide!r} decides without asking anyone, so {' and '.join(asking)} would do "
                "nothing; keep one or the other"
            )
        if self.vms is not None and (self.min_vms is not None or self.max_vms is not None):
            raise ValueError("vms is an exact number; give it or min_vms / max_vms, not both")
        if self.min_vms is not None and self.max_vms is not None and self.min_vms > self.max_vms:
            raise ValueError(f"min_vms {self.min_vms} is more than max_vms {self.max_vms}: nothing matches")
        if self.approver_roles == () and not self.approvers:
            raise ValueError("approver_roles = [] and no approvers: the rule asks nobody; use decide instead")
        return self

    @property
    def conditions(self) -> tuple[str, ...]:
        """The condition keys this rule sets (none: it matches every request)."""
        return tuple(key for key in _CONDITION_KEYS if getattr(self, key) is not None)


_CONDITION_KEYS = (
    "enterprise",
    "datacenter",
    "task_types",
    "requester_role",
    "vms",
    "min_vms",
    "max_vms",
    "max_cpu",
    "max_ram",
    "max_disk",
)


class PolicySettings(_Section):
    approver_role: str = Field(
        "ENTERPRISE_ADMIN", description="role whose users approve their enterprise's tasks"
    )
    task_types: tuple[str, ...] = Field(
        WORKFLOW_TASK_TYPES, description="task types that need approval; others continue at once"
    )
    when_no_approver: DefaultAction = Field(
        "cancel", description="what to do when the enterprise has no approver with an email"
    )
    when_requester_is_approver: RequesterIsApprover = Field(
        "ask", description="ask the other approvers (separation of duties), accept, or cancel"
    )
    approvals_needed: int = Field(1, ge=1, description="distinct approvals that accept; a decline vetoes")
    deadline: int | None = Field(
        None, description="seconds after triage when at_deadline decides; none waits"
    )
    at_deadline: DefaultAction = Field("cancel", description="what the deadline decides")
    reminders: tuple[int, ...] = Field((), description="seconds after the approval email, one reminder each")
    escalate_after: int | None = Field(None, description="seconds after triage when escalate_to is asked")
    escalate_to: tuple[str, ...] = Field((), description="addresses asked at escalate_after")
    rules: tuple[PolicyRule, ...] = Field(
        (),
        description="[[policy.rules]]: tried in order, the first that matches applies; else the keys above",
    )

    _upper = field_validator("task_types", mode="before")(_task_type_list)
    _deadline = field_validator("deadline", "escalate_after", mode="before")(_duration)
    _reminders = field_validator("reminders", mode="before")(_durations)
    _escalate_to = field_validator("escalate_to", mode="before")(_address_list)
    _addresses = field_validator("escalate_to")(_checked_addresses)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[PolicyRule, ...]) -> tuple[PolicyRule, ...]:
        seen: dict[str, int] = {}
        for index, rule in enumerate(rules):
            first = seen.setdefault(rule.name.casefold(), index)
            if first != index:
                raise ValueError(
                    f"policy.rules[{first}] and policy.rules[{index}] are both named {rule.name!r}; each "
                    "rule needs a name of its own (the audit log and the emails name the rule that decided)"
                )
        return rules

    @model_validator(mode="after")
    def _reachable(self) -> PolicySettings:
        """Refuse rules that could never apply: after a rule that matches everything, or only for task
        types that are not gated (those are accepted before any rule is tried)."""
        for index, rule in enumerate(self.rules):
            ungated = [t for t in rule.task_types or () if t not in self.task_types]
            if ungated:
                raise ValueError(
                    f"policy.rules[{index}] ({rule.name!r}).task_types: {', '.join(ungated)} is not in "
                    "policy.task_types, so such tasks are accepted at once, before any rule is tried"
                )
            if index and not self.rules[index - 1].conditions:
                raise ValueError(
                    f"policy.rules[{index}] ({rule.name!r}) comes after policy.rules[{index - 1}] "
                    f"({self.rules[index - 1].name!r}), which matches every request, so it never applies"
                )
        problems = _timing_problems("policy", self, self, self.model_fields_set)
        for index, rule in enumerate(self.rules):
            if rule.decide is None:
                given = {key for key in APPROVAL_KEYS if getattr(rule, key) is not None}
                problems += _timing_problems(f"policy.rules[{index}] ({rule.name!r})", rule, self, given)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def timing(self, rule: PolicyRule | None) -> Timing:
        """The deadline, reminders, escalation and quorum of `rule` (the default rule when None), the
        default rule's keys filling in what the rule leaves out."""
        return _timing(rule, self)

    def rule_named(self, name: str | None) -> PolicyRule | None:
        """The rule of that name, or None (no name, or no such rule any more)."""
        return next((rule for rule in self.rules if name is not None and rule.name == name), None)


@dataclass(frozen=True, slots=True)
class Timing:
    """How many approvals a rule needs, and what time does to its requests (README "Rules")."""

    approvals_needed: int
    deadline: int | None
    at_deadline: DefaultAction
    reminders: tuple[int, ...]
    escalate_after: int | None
    escalate_to: tuple[str, ...]


def _pick(rule: PolicyRule | None, settings: PolicySettings, key: str) -> Any:
    value = getattr(rule, key) if rule is not None else None
    return getattr(settings, key) if value is None else value


def _timing(rule: PolicyRule | None, settings: PolicySettings) -> Timing:
    return Timing(
        approvals_needed=_pick(rule, settings, "approvals_needed"),
        deadline=_pick(rule, settings, "deadline"),
        at_deadline=_pick(rule, settings, "at_deadline"),
        reminders=tuple(sorted(_pick(rule, settings, "reminders"))),
        escalate_after=_pick(rule, settings, "escalate_after"),
        escalate_to=_pick(rule, settings, "escalate_to"),
    )


def _timing_problems(
    where: str, own: PolicyRule | PolicySettings, settings: PolicySettings, given: set[str]
) -> list[str]:
    """What cannot work in one rule's quorum and timing (`where` names it), with the default rule's values
    filling in: a quorum its named approvers could never reach, reminders or an escalation at or after
    the deadline, half an escalation, an `at_deadline` without a deadline."""
    rule = own if isinstance(own, PolicyRule) else None
    timing = _timing(rule, settings)
    problems: list[str] = []
    roles = (settings.approver_role,) if rule is None or rule.approver_roles is None else rule.approver_roles
    named = rule.approvers or () if rule is not None else ()
    if not roles and len(named) < timing.approvals_needed:
        problems.append(
            f"{where}.approvals_needed: {timing.approvals_needed} approvals are needed, but the rule names "
            f"only {len(named)} approver(s) and no approver_roles, so it could never be reached"
        )
    if "at_deadline" in given and timing.deadline is None:
        problems.append(f"{where}.at_deadline: there is no deadline, so it would never apply; set deadline")
    if len(set(timing.reminders)) != len(timing.reminders):
        problems.append(f"{where}.reminders: the same reminder is listed twice")
    if timing.deadline is not None:
        late = [duration_words(r) for r in timing.reminders if r >= timing.deadline]
        if late and {"reminders", "deadline"} & given:
            problems.append(
                f"{where}.reminders: {', '.join(late)} is not before the deadline "
                f"({duration_words(timing.deadline)}), so it would never be sent"
            )
        if (
            timing.escalate_after is not None
            and timing.escalate_after >= timing.deadline
            and {"escalate_after", "deadline"} & given
        ):
            problems.append(
                f"{where}.escalate_after: {duration_words(timing.escalate_after)} is not before the deadline "
                f"({duration_words(timing.deadline)}), so nobody would be escalated to"
            )
    if {"escalate_after", "escalate_to"} & given:
        if timing.escalate_after is None:
            problems.append(f'{where}.escalate_after: escalate_to is set, so say when (such as "1d")')
        elif not timing.escalate_to:
            problems.append(f"{where}.escalate_to: escalate_after is set, so say whom (email addresses)")
    return problems


class AccessSettings(_Section):
    admin_roles: tuple[str, ...] = Field(
        ("CLOUD_ADMIN",), description="Abiquo roles that see and decide every request (dashboard, API)"
    )
    login_ttl: float = Field(
        60.0, gt=0, description="seconds a sign-in checked against Abiquo's /login is trusted again"
    )

    _split_roles = field_validator("admin_roles", mode="before")(_split_list)


class ApiToken(_Section):
    """One `[[api.tokens]]`: a name (the audit log's actor, `token:<name>`), a scope, the token's hash."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", description="the actor")
    scope: Literal["read", "decide"] = Field("read", description="read, or read and decide and retry")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the token (`abiquo-workflow api-token`)"
    )


class ApiSettings(_Section):
    tokens: tuple[ApiToken, ...] = Field((), description="[[api.tokens]]: bearer tokens of /api/v1")

    @field_validator("tokens")
    @classmethod
    def _unique_names(cls, tokens: tuple[ApiToken, ...]) -> tuple[ApiToken, ...]:
        names = [token.name for token in tokens]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"api.tokens: {', '.join(twice)} named twice; the name is the audit's actor")
        return tokens


class LinksSettings(_Section):
    one_click: bool = Field(False, description="decide on GET, as the 2013 tool did (unsafe)")
    ttl: int = Field(7 * 24 * 3600, gt=0, description="seconds an emailed link stays valid")


class DashboardSettings(_Section):
    session_lifetime: int = Field(
        8 * 3600, gt=0, description="seconds a dashboard sign-in lasts; then the person signs in again"
    )
    max_failed_sign_ins: int = Field(
        5, gt=0, description="wrong passwords for one user name (or 4x from one address) per 15 minutes"
    )


class WorkerSettings(_Section):
    concurrency: int = Field(
        64, gt=0, description="jobs in flight per process at most, within the Abiquo and SMTP bounds"
    )
    max_attempts: int = Field(20, gt=0, description="tries before a job counts as failed (~15 min)")
    retry_base_delay: float = Field(1.0, gt=0, description="first retry delay, seconds; doubles each time")
    retry_max_delay: float = Field(60.0, gt=0, description="cap of the retry backoff, seconds")
    lease: float = Field(60.0, gt=0, description="seconds a claimed job stays owned")


class ReconcileSettings(_Section):
    interval: timedelta = Field(
        timedelta(minutes=5),
        description="how often pending tasks are compared with Abiquo's (a duration, 5m); 0 turns it off",
    )

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        """A duration as text ("5m", "90s", "0"), or whole seconds (300 in TOML, "300" from the
        environment)."""
        if isinstance(value, str):
            return timedelta(seconds=int(value) if value.strip().isdigit() else duration_seconds(value))
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return timedelta(seconds=value)
        return value


class LogSettings(_Section):
    format: Literal["json", "console"] | None = Field(
        None,
        description="json (one JSON object a line) or console (for people); by default json unless "
        "stderr is a terminal",
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the least severe lines written; --verbose makes it debug"
    )

    @field_validator("format", "level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class Settings(_Section):
    """Every setting of the connector. See the README's Configuration section for each key."""

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    abiquo: AbiquoSettings = AbiquoSettings()
    mail: MailSettings = MailSettings()
    policy: PolicySettings = PolicySettings()
    links: LinksSettings = LinksSettings()
    access: AccessSettings = AccessSettings()
    api: ApiSettings = ApiSettings()
    dashboard: DashboardSettings = DashboardSettings()
    worker: WorkerSettings = WorkerSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _links_outlive_deadlines(self) -> Settings:
        """Refuse a `links.ttl` shorter than a deadline: approvers' links would die before it, and the
        escalated ones too (README "Rules"). The links' expiry does not follow the deadline on purpose:
        one `links.ttl` is what an administrator reads and audits."""
        ttl = self.links.ttl
        problems: list[str] = []
        for index, rule in [(None, None), *enumerate(self.policy.rules)]:
            if rule is not None and rule.decide is not None:
                continue
            deadline = self.policy.timing(rule).deadline
            if deadline is None or deadline <= ttl:
                continue
            where = "policy" if rule is None else f"policy.rules[{index}] ({rule.name!r})"
            problems.append(
                f"links.ttl: {ttl} seconds is shorter than {where}.deadline ({duration_words(deadline)}), so "
                "the emailed links would stop working before the deadline; raise links.ttl to at least "
                f"{deadline} or shorten the deadline"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True)
class LegacyKey:
    """Where a key of the 2013 tool's `workflow.cfg` goes in our settings."""

    section: str
    key: str
    target: str | None
    note: str = ""


LEGACY_KEYS: tuple[LegacyKey, ...] = (
    LegacyKey("server", "bind_address", "server.bind", "host part"),
    LegacyKey("server", "bind_port", "server.bind", "port part"),
    LegacyKey("server", "hostname", "server.public_url", "with port"),
    LegacyKey("server", "port", "server.public_url", "port part"),
    LegacyKey("server", "default_action", "policy.when_no_approver"),
    LegacyKey("abiquo", "api_location", "abiquo.api_url"),
    LegacyKey("abiquo", "api_username", "abiquo.username"),
    LegacyKey("abiquo", "api_password", "abiquo.password"),
    LegacyKey("abiquo", "api_approve_role", "policy.approver_role"),
    LegacyKey("mail", "from", "mail.sender"),
    LegacyKey("mail", "admin_subject", "mail.approver_subject"),
    LegacyKey("mail", "requester_subject", "mail.requester_subject"),
)


@dataclass(frozen=True)
class LegacyConfig:
    values: dict[str, dict[str, Any]]
    warnings: list[str]


def read_legacy_config(path: Path) -> LegacyConfig:
    """Read the original tool's INI `workflow.cfg` into our sections, with a warning per key moved.

    Keys we do not know (such as the old SMTP settings, which lived in code) get a warning too.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error) as exc:
        raise ConfigError([f"{path}: cannot read legacy config ({exc})"]) from None
    known = {(k.section, k.key): k for k in LEGACY_KEYS}
    values: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    server = dict(parser["server"]) if parser.has_section("server") else {}

    def put(target: str, value: Any) -> None:
        section, key = target.split(".")
        values.setdefault(section, {})[key] = value

    for section in parser.sections():
        for key, raw in parser[section].items():
            legacy = known.get((section, key))
            if legacy is None or legacy.target is None:
                warnings.append(f"{path}: [{section}] {key} is not used by abiquo-workflow; ignored")
                continue
            warnings.append(f"{path}: [{section}] {key} is deprecated; set {legacy.target} in the TOML file")
            if legacy.target in ("server.bind", "server.public_url"):
                continue  # assembled below from two keys each
            if legacy.target == "policy.when_no_approver":
                put(legacy.target, raw.strip().lower())
            else:
                put(legacy.target, raw.strip())
    if "bind_address" in server or "bind_port" in server:
        put(
            "server.bind",
            f"{server.get('bind_address', '127.0.0.1')}:{server.get('bind_port', '8080')}",
        )
    if "hostname" in server:
        host = server["hostname"].strip()
        if not host.startswith(("http://", "https://")):
            host = f"http://{host}"
        port = server.get("port", "").strip()
        put("server.public_url", f"{host}:{port}" if port else host)
    return LegacyConfig(values, warnings)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _rule_names(data: Mapping[str, Any]) -> list[object]:
    """The `name` of each `[[policy.rules]]` entry as given (None where it has none), to name rules in
    error messages."""
    policy = data.get("policy")
    rules = policy.get("rules") if isinstance(policy, Mapping) else None
    if not isinstance(rules, list | tuple):
        return []
    return [rule.get("name") if isinstance(rule, Mapping) else None for rule in rules]


def _key_of(loc: Sequence[str | int], rule_names: Sequence[object]) -> str:
    """`policy.rules[2] ('small').max_vms` for a key inside a rule, `mail.smtp_port` for the others."""
    if len(loc) > 2 and tuple(loc[:2]) == ("policy", "rules") and isinstance(loc[2], int):
        index = loc[2]
        name = rule_names[index] if index < len(rule_names) else None
        rule = f"policy.rules[{index}]" + (
            f" ({name.strip()!r})" if isinstance(name, str) and name.strip() else ""
        )
        return ".".join([rule, *(str(part) for part in loc[3:])])
    return ".".join(str(part) for part in loc)


def _not_yet(loc: Sequence[str | int]) -> bool:
    """A key of a later version's policy (`NOT_YET_SUPPORTED`) in `[policy]` or in a rule."""
    last = str(loc[-1]) if loc else ""
    in_policy = bool(loc) and loc[0] == "policy" and (len(loc) == 2 or (len(loc) == 4 and loc[1] == "rules"))
    return in_policy and last in NOT_YET_SUPPORTED


def _describe(error: Mapping[str, Any], rule_names: Sequence[object] = ()) -> str:
    key = _key_of(error["loc"], rule_names)
    if error["type"] == "extra_forbidden":
        if _not_yet(error["loc"]):
            return f"{key}: not supported yet by this version of abiquo-workflow; remove it"
        return f"{key}: unknown key"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not key or message.startswith((f"{key}.", f"{key}[")):
        return message  # a whole-section check that names the rule and key itself
    value = error.get("input")
    if error["type"] != "missing" and isinstance(value, str | int | float | bool):
        shown = "***" if "password" in key or "secret" in key or "token" in key else repr(value)
        if shown in message:
            return f"{key}: {message}"
        return f"{key}: {message} (got {shown})"
    return f"{key}: {message}"


def environment_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """`AWF_MAIL__SMTP_PORT=2525` → `{"mail": {"smtp_port": "2525"}}`; values stay strings."""
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, sep, key = name.removeprefix(ENV_PREFIX).lower().partition("__")
        if not sep or not key:
            continue  # AWF_TEST_POSTGRES_URL and friends are not settings
        overrides.setdefault(section, {})[key] = value
    return overrides


def build_settings(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate file data, overridden by the environment, into `Settings`; or raise `ConfigError`."""
    merged = _merge(dict(data), environment_overrides(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        names = _rule_names(merged)
        raise ConfigError([_describe(e, names) for e in exc.errors()]) from None


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    #: Where the settings came from, for `check` and the start-up log.
    sources: tuple[str, ...]
    warnings: tuple[str, ...]


def load_settings(
    config_file: Path | None = None,
    legacy_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Load settings the way every command does.

    Without `config_file`, `./abiquo-workflow.toml` is read when it exists.
    """
    data: dict[str, Any] = {}
    sources: list[str] = []
    warnings: list[str] = []
    if legacy_file is not None:
        legacy = read_legacy_config(legacy_file)
        data = _merge(data, legacy.values)
        warnings.extend(legacy.warnings)
        sources.append(str(legacy_file))
    if config_file is None and DEFAULT_CONFIG_FILE.exists():
        config_file = DEFAULT_CONFIG_FILE
    if config_file is not None:
        data = _merge(data, _read_toml(config_file))
        sources.append(str(config_file))
    if environment_overrides(os.environ if environ is None else environ):
        sources.append("environment")
    settings = build_settings(data, environ)
    return LoadedSettings(settings, tuple(sources), tuple(warnings))
