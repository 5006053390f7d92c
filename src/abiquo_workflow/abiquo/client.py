"""The async client for the Abiquo API: enrichment reads, approvers, pending tasks, login, continue/cancel.

Href resolution (docs/protocol.md §3.7). Callback hrefs are relative to the API root and usually lack the API
path (`cloud/virtualdatacenters/3/…`); everything the API returns is absolute. `AbiquoClient.resolve` keeps
an href with a scheme as it is; otherwise it drops a leading `/` and a leading copy of the configured API
path (`api/`), then joins the rest to `abiquo.api_url`. Because Abiquo's callback carries no credentials,
a forged callback could name any absolute URL: the client therefore sends its credentials only to the
origin (scheme, host, port) of `abiquo.api_url` and refuses any other with `AbiquoProtocolError`.

Paging (docs/protocol.md §8.1). Lists are read to their end. After each page the client follows its
`rel="next"` link when it has one (users, roles, enterprises). Real Abiquo's pending-task listings link only
`self` and `parent`, never `next`, though they page with `startwith`/`limit` and declare `totalSize`: so
without a `next` link, while `totalSize` exceeds the members read so far, the client asks for the same URL
again with `startwith` set to that count and `limit` to the size of the page just read (other query
parameters kept). An empty page ends any list, and a page URL met twice is an `AbiquoProtocolError`.

Retries. Every request, reads and continue/cancel POSTs alike, is retried with exponential backoff and
jitter (stamina) on connection failures, timeouts and 5xx answers, `abiquo.retries` extra attempts at most;
a 4xx is never retried. Repeating a continue or cancel whose first answer was lost is safe: Abiquo refuses
the repeat with TASK-2, which is handled below (the outcome then reads ALREADY_DECIDED_OR_GONE although our
first attempt may have been the one that decided; `now.state` tells). At most `abiquo.max_connections`
requests are in flight at once (a semaphore around each attempt, plus the connection pool's limit).

Continue and cancel (§4). 2xx → `DeliveryOutcome(DONE)`. Abiquo refuses an unknown task with TASK-1 (404)
and a task no longer held with TASK-2 (409 or 400): the client then re-reads the task (its `self` link, or
`…/tasks/{taskId}` cut from the continue/cancel href) and returns `ALREADY_DECIDED_OR_GONE` with what Abiquo
shows now (`gone=True` when the task cannot be found) and Abiquo's error code and message. If the re-read
shows the task still held (QUEUEING), the refusal was not about the task's state, so it is raised as
`AbiquoProtocolError` rather than reported as decided.

Shared reads (cache.py). What many requests of one enterprise share can be read through a short-lived
cache kept by the client (`abiquo.cache_ttl` seconds, 30 by default; 0 turns it off), keyed by the media
type and the absolute URL (after `resolve`): the enterprise (`get_enterprise`), its users
(`enterprise_users`), a virtual datacenter (`get_vdc`), a datacenter (`get_datacenter`) and a virtual
appliance (`get_vapp`). Each of these takes `cached=`, False by default: a caller says that a few seconds'
age is fine for it (enrichment does), and every other read stays live. Concurrent misses share one read;
errors are never kept. What must be live has no `cached=` at all: tasks (`get_task`, the re-read after a
refused continue), VMs (their sizes change, and each request reads its own), the requester (`get_user`:
their role can decide a request automatically), `login`, `pending_tasks`, continue and cancel.

Errors: 401/403 → `AbiquoAuthError`; 404 on a read → `AbiquoNotFound`; connection failure, timeout or 5xx
after every retry → `AbiquoUnavailable`; any other status or an unreadable answer → `AbiquoProtocolError`.
Each message is a sentence naming the method, the URL (never credentials) and the status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import http.cookiejar
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx2
import stamina
import structlog

from abiquo_workflow import metrics
from abiquo_workflow.abiquo import _readers, payload
from abiquo_workflow.abiquo._representation import (
    JsonRepresentation,
    Representation,
    XmlRepresentation,
    error_of,
    parse,
)
from abiquo_workflow.abiquo.cache import ReadCache
from abiquo_workflow.config import AbiquoSettings
from abiquo_workflow.domain import (
    AbiquoTaskState,
    Datacenter,
    DeliveryOutcome,
    DeliveryResult,
    Enterprise,
    HeldTask,
    PayloadFormat,
    User,
    VirtualAppliance,
    VirtualDatacenter,
    VirtualMachine,
)
from abiquo_workflow.exceptions import (
    AbiquoAuthError,
    AbiquoError,
    AbiquoNotFound,
    AbiquoProtocolError,
    AbiquoUnavailable,
    PayloadError,
)

__all__ = ["AbiquoClient"]

log = structlog.stdlib.get_logger(__name__)

T = TypeVar("T")

#: Statuses with which Abiquo refuses a continue or cancel of a task that is gone (TASK-1) or no longer
#: held (TASK-2). The codes' HTTP statuses are inferred (docs/protocol.md §4), hence all three.
_REFUSED_AS_DECIDED: Final = frozenset({400, 404, 409})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_DOT_SEGMENTS: Final = frozenset({".", "..", "%2e", "%2e%2e", ".%2e", "%2e."})


class _ServerError(Exception):
    """A 5xx answer, raised inside the retry loop so that stamina retries it."""

    def __init__(self, response: httpx2.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


#: What is worth another attempt: the network, the clock, or the server failed; never a 4xx.
_RETRYABLE: Final = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError, _ServerError)


class AbiquoClient:
    """The connector's session with one Abiquo API, authenticated as `settings.username`.

    Use it as `async with AbiquoClient(settings) as client:`. `transport` replaces httpx2's network
    transport (tests wrap the real one). `wire_format` chooses the media types asked for: JSON (3.x and
    later, the default) or XML (2.x); answers are read by their Content-Type either way. `cache` keeps the
    reads asked for with `cached=True` (see "Shared reads" in the module docstring); by default one of
    `abiquo.cache_ttl` seconds, private to this client. Tests pass one with their own clock.
    """

    def __init__(
        self,
        settings: AbiquoSettings,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        wire_format: PayloadFormat = PayloadFormat.JSON,
        cache: ReadCache | None = None,
    ) -> None:
        self._settings = settings
        self._cache = cache if cache is not None else ReadCache(settings.cache_ttl)
        self._transport = transport
        self._wire_format = wire_format
        self._base_url = settings.base_url
        self._api_path = urlsplit(self._base_url).path.strip("/")
        self._origin = _origin(self._base_url)
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._http: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        if self._http is not None:
            raise RuntimeError("This AbiquoClient is already open; open each client once.")
        settings = self._settings
        self._http = httpx2.AsyncClient(
            auth=httpx2.BasicAuth(settings.username, settings.password.get_secret_value()),
            verify=_tls_context(settings.verify_tls),
            timeout=settings.timeout,
            limits=httpx2.Limits(
                max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
            ),
            transport=self._transport,
            # Abiquo answers with a session cookie. Keeping none means every request is authenticated
            # by its own Basic credentials, so a person's `login` never lends its session to the
            # connector's calls, nor the other way round.
            cookies=http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._cache.clear()  # before the connections go: no shared read may outlive them
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def resolve(self, href: str) -> str:
        """The absolute URL of an href, per docs/protocol.md §3.7 (see the module docstring)."""
        href = href.strip()
        if urlsplit(href).scheme:
            return href
        relative = href.lstrip("/")
        if self._api_path and (relative == self._api_path or relative.startswith(self._api_path + "/")):
            relative = relative[len(self._api_path) :].lstrip("/")
        return f"{self._base_url}/{relative}" if relative else self._base_url

    def is_api_url(self, url: str) -> bool:
        """Whether an absolute URL lies inside the configured API: its origin, and under its path."""
        if _origin(url) != self._origin:
            return False
        path = urlsplit(url).path.strip("/")
        if any(segment.lower() in _DOT_SEGMENTS for segment in path.split("/")):
            return False  # `api/../elsewhere` is not under the API, whatever the prefix says
        return not self._api_path or path == self._api_path or path.startswith(self._api_path + "/")

    # --- People and enterprises ----------------------------------------------------------------------

    async def get_user(self, href: str) -> User:
        return await self._read(href, "user", _readers.user_from)

    async def get_enterprise(self, href: str, *, cached: bool = False) -> Enterprise:
        return await self._read(href, "enterprise", _readers.enterprise_from, cached=cached)

    async def enterprises(self) -> list[Enterprise]:
        """Every enterprise the connector's user can see, all pages."""
        return await self._read_all("admin/enterprises", "enterprises", _readers.enterprise_from)

    async def enterprise_users(self, enterprise_href: str, *, cached: bool = False) -> list[User]:
        """Every user of an enterprise with their role (`userswithroles`), all pages; with `cached`, a
        list at most `abiquo.cache_ttl` seconds old, shared with other requests."""
        users_href = self.resolve(enterprise_href).rstrip("/") + "/users"

        async def read() -> tuple[User, ...]:
            return tuple(await self._read_all(users_href, "userswithroles", _readers.user_from))

        users = await self._cache.get(("userswithroles", users_href), read) if cached else await read()
        return list(users)  # a list of its own: the cached tuple is shared

    async def approvers(self, enterprise_href: str, role: str) -> list[User]:
        """Active users of the enterprise whose role is named exactly `role` and who have an email."""
        users = await self.enterprise_users(enterprise_href)
        return [user for user in users if user.role == role and user.email and user.active]

    async def role_exists(self, name: str) -> bool:
        """Whether a role of that exact name exists (all pages of `admin/roles`)."""
        names = await self._read_all("admin/roles", "roles", lambda rep, _href: _readers.role_name_from(rep))
        return name in names

    async def login(self, username: str, password: str) -> User:
        """The user behind these credentials (`GET /login` as that person); 401/403 → `AbiquoAuthError`."""
        url = self.resolve("login")
        response = await self._send(
            "GET", url, accept=self._media("user"), auth=httpx2.BasicAuth(username, password)
        )
        if response.status_code in (401, 403):
            raise AbiquoAuthError(
                f"Abiquo refused the credentials of {username!r} ({response.status_code} from GET "
                f"{_safe(url)}).",
                status=response.status_code,
                url=_safe(url),
            )
        self._check(response)
        return self._build(response, _readers.user_from)

    async def version(self) -> str:
        """The platform version as Abiquo reports it (`GET /version`), for example `3.10.2`."""
        url = self.resolve("version")
        response = await self._send("GET", url, accept="text/plain")
        self._check(response)
        text = response.text.strip()
        if not text:
            raise AbiquoProtocolError(
                f"Abiquo answered GET {_safe(url)} with an empty version.",
                status=response.status_code,
                url=_safe(url),
            )
        return text

    async def probe(self, *, within: float) -> None:
        """Whether Abiquo answers and takes the connector's credentials, asked once (`GET /version`, no
        retries) within `within` seconds: what `/readyz` asks. Raises as `version` does."""
        url = self.resolve("version")
        response = await self._send("GET", url, accept="text/plain", retries=0, within=within)
        self._check(response)

    # --- What a task is about ------------------------------------------------------------------------

    async def get_vm(self, href: str, *, with_storage: bool = True) -> VirtualMachine:
        """A VM; with its hard disks and volumes (read concurrently) unless `with_storage` is False.

        The disks are behind the `harddisks` link (3.x) or the `disks` link (2.x); a VM with neither
        gets its boot disk's size from its `hdInBytes` (2.x).
        """
        vm = await self._read(href, "virtualmachine", _readers.vm_from)
        if not with_storage:
            return vm
        disks_read = (
            self._read_all(vm.harddisks_href, "harddisks", lambda rep, _href: _readers.disk_from(rep))
            if vm.harddisks_href
            else _nothing()
        )
        volumes_read = (
            self._read_all(vm.volumes_href, "volumes", lambda rep, _href: _readers.volume_from(rep))
            if vm.volumes_href
            else _nothing()
        )
        disks, volumes = await asyncio.gather(disks_read, volumes_read)
        if not vm.harddisks_href and vm.hd_in_bytes:
            disks = [_readers.boot_disk_from_bytes(vm.hd_in_bytes)]
        return dataclasses.replace(vm, disks=tuple(disks), volumes=tuple(volumes))

    async def get_vdc(self, href: str, *, cached: bool = False) -> VirtualDatacenter:
        return await self._read(href, "virtualdatacenter", _readers.vdc_from, cached=cached)

    async def get_datacenter(self, href: str, *, cached: bool = False) -> Datacenter:
        return await self._read(href, "datacenter", _readers.datacenter_from, cached=cached)

    async def get_vapp(self, href: str, *, cached: bool = False) -> VirtualAppliance:
        return await self._read(href, "virtualappliance", _readers.vapp_from, cached=cached)

    # --- Tasks ---------------------------------------------------------------------------------------

    async def get_task(self, href: str) -> AbiquoTaskState:
        """A task as Abiquo shows it now, with its links (`GET {self}`); 404 → `AbiquoNotFound`."""
        return await self._read(href, "task", _readers.task_state_from)

    async def pending_tasks(self, enterprise_href: str) -> list[HeldTask]:
        """The held (QUEUEING) tasks of an enterprise, all pages (`…/action/pendingtasks`, §6)."""
        pending_href = self.resolve(enterprise_href).rstrip("/") + "/action/pendingtasks"
        return await self._read_all(pending_href, "tasks", lambda rep, _href: _held_task_from(rep))

    async def continue_task(self, task: HeldTask, reason: str | None = None) -> DeliveryOutcome:
        """POST the task's `continue` link, with `reason` as a text/plain body when given."""
        return await self._deliver(task, task.continue_href, reason)

    async def cancel_task(self, task: HeldTask, reason: str | None = None) -> DeliveryOutcome:
        """POST the task's `cancel` link, with `reason` as a text/plain body when given."""
        return await self._deliver(task, task.cancel_href, reason)

    async def _deliver(self, task: HeldTask, href: str, reason: str | None) -> DeliveryOutcome:
        url = self.resolve(href)
        content = reason.encode("utf-8") if reason is not None else None
        response = await self._send("POST", url, accept=self._media_errors(), content=content)
        if response.is_success:
            return DeliveryOutcome(DeliveryResult.DONE, status=response.status_code)
        if response.status_code not in _REFUSED_AS_DECIDED:
            raise self._error_for(response)
        code, message = error_of(response.content, response.headers.get("content-type"))
        now = await self._reread(task, href, response.status_code)
        if now.state == "QUEUEING":
            raise AbiquoProtocolError(
                f"Abiquo refused POST {_safe(url)} with {response.status_code}{_detail(code, message)}, "
                f"yet task {task.task_id} is still waiting for review.",
                status=response.status_code,
                url=_safe(url),
            )
        log.debug(
            "abiquo.task_already_decided",
            task_id=task.task_id,
            url=_safe(url),
            status=response.status_code,
            error_code=code,
            state_now=now.state,
            gone=now.gone,
        )
        return DeliveryOutcome(
            DeliveryResult.ALREADY_DECIDED_OR_GONE,
            now=now,
            error_code=code,
            message=message,
            status=response.status_code,
        )

    async def _reread(self, task: HeldTask, action_href: str, refused_with: int) -> AbiquoTaskState:
        """What Abiquo shows of a task now, after it refused a continue or cancel with `refused_with`.

        When the task cannot be re-read, its state is unknown (None) and it counts as gone if the
        refusal was a 404 (TASK-1).
        """
        unknown = AbiquoTaskState(task.task_id, None, task.task_type, gone=refused_with == 404)
        task_href = task.self_href or _task_href_of(action_href)
        if task_href is None:
            return unknown
        try:
            return await self.get_task(task_href)
        except AbiquoNotFound:
            return AbiquoTaskState(task.task_id, None, task.task_type, gone=True)
        except (AbiquoUnavailable, AbiquoProtocolError) as exc:
            # The refusal itself is certain; only the state now is unknown.
            log.warning("abiquo.task_reread_failed", task_id=task.task_id, error=str(exc))
            return unknown

    # --- Reading answers -----------------------------------------------------------------------------

    async def _read(
        self,
        href: str,
        media: str,
        build: Callable[[Representation, str | None], T],
        *,
        cached: bool = False,
    ) -> T:
        """GET one object and build a domain value from it; `build` gets the URL read as fallback href.

        With `cached`, through the shared cache, keyed by the media type and the absolute URL."""
        url = self.resolve(href)

        async def read() -> T:
            response = await self._send("GET", url, accept=self._media(media))
            self._check(response)
            return self._build(response, build)

        return await self._cache.get((media, url), read) if cached else await read()

    async def _read_all(
        self, href: str, media: str, build: Callable[[Representation, str | None], T]
    ) -> list[T]:
        """GET a list and every following page (see Paging in the module docstring), building a value
        from each member."""
        values: list[T] = []
        url: str | None = self.resolve(href)
        seen: set[str] = set()
        while url is not None:
            response = await self._get_page(url, media, seen)
            try:
                page = parse(response.content, response.headers.get("content-type"))
                members = page.items()
                values.extend(build(member, None) for member in members)
                total = page.total()
            except ValueError as exc:
                raise self._unreadable(response, exc) from exc
            url = self._next_page_url(url, page, len(members), len(values), total)
        return values

    def _next_page_url(
        self, url: str, page: Representation, page_size: int, read: int, total: int | None
    ) -> str | None:
        """Where the rest of a list is: its `next` link, else (pending tasks link none) the same URL
        from `startwith=read`, while `totalSize` says members remain; None once the list is read."""
        if page_size == 0:
            return None  # an empty page ends any list, whatever it links or counts
        next_page = page.link("next")
        if next_page is not None:
            return self.resolve(next_page.href)
        if total is None or read >= total:
            return None
        return _with_query(url, startwith=read, limit=page_size)

    async def _get_page(self, url: str, media: str, seen: set[str]) -> httpx2.Response:
        if url in seen:
            raise AbiquoProtocolError(
                f"Abiquo's pages loop back to {_safe(url)}; the list cannot be read to its end.",
                url=_safe(url),
            )
        seen.add(url)
        response = await self._send("GET", url, accept=self._media(media))
        self._check(response)
        return response

    def _build(self, response: httpx2.Response, build: Callable[[Representation, str | None], T]) -> T:
        try:
            return build(parse(response.content, response.headers.get("content-type")), str(response.url))
        except ValueError as exc:
            raise self._unreadable(response, exc) from exc

    # --- Sending requests ----------------------------------------------------------------------------

    def _media(self, name: str) -> str:
        """`application/vnd.abiquo.<name>+json` (or `+xml`), with `; version=X` when one is configured."""
        media = f"application/vnd.abiquo.{name}+{self._wire_format.value}"
        return self._versioned(media)

    def _media_errors(self) -> str:
        """The Accept of continue/cancel, whose only body is an error list.

        `*/*` follows, so that no Abiquo refuses the call over its Accept (S2 sent just that, §4).
        """
        return self._media("errors") + ", */*; q=0.5"

    def _versioned(self, media: str) -> str:
        version = self._settings.api_version
        return f"{media}; version={version}" if version else media

    async def _send(
        self,
        method: str,
        url: str,
        *,
        accept: str,
        content: bytes | None = None,
        auth: httpx2.BasicAuth | None = None,
        retries: int | None = None,
        within: float | None = None,
    ) -> httpx2.Response:
        """Send with retries (`abiquo.retries` unless given), each attempt within `within` seconds
        (`abiquo.timeout` unless given); return the answer (any status below 500)
        or raise `AbiquoUnavailable`. Each attempt's time is observed in
        `awf_abiquo_request_duration_seconds` (the wait for a free connection slot left out)."""
        if self._http is None:
            raise RuntimeError(
                "AbiquoClient is not open: use `async with AbiquoClient(settings) as client:`."
            )
        http = self._http
        self._check_origin(url)
        headers = {"Accept": accept}
        if content is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        attempts = (self._settings.retries if retries is None else retries) + 1
        per_request = self._settings.timeout if within is None else within
        try:
            async for attempt in stamina.retry_context(on=_RETRYABLE, attempts=attempts, timeout=None):
                with attempt:
                    async with self._slots:
                        started, status = time.perf_counter(), None
                        try:
                            response = await http.request(
                                method,
                                url,
                                headers=headers,
                                content=content,
                                auth=auth if auth is not None else httpx2.USE_CLIENT_DEFAULT,
                                timeout=per_request,
                            )
                            status = response.status_code
                        finally:
                            metrics.ABIQUO_REQUESTS.labels(method, metrics.status_class(status)).observe(
                                time.perf_counter() - started
                            )
                    log.debug("abiquo.request", method=method, url=_safe(url), status=response.status_code)
                    if response.status_code >= 500:
                        raise _ServerError(response)
        except _ServerError as exc:
            status = exc.response.status_code
            code, message = error_of(exc.response.content, exc.response.headers.get("content-type"))
            raise AbiquoUnavailable(
                f"Abiquo answered {method} {_safe(url)} with {status}{_detail(code, message)} "
                f"{_attempts(attempts)}.",
                status=status,
                url=_safe(url),
            ) from None
        except httpx2.TimeoutException as exc:
            raise AbiquoUnavailable(
                f"Abiquo did not answer {method} {_safe(url)} within {per_request:g} s "
                f"{_attempts(attempts)} ({type(exc).__name__}).",
                url=_safe(url),
            ) from exc
        except (httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
            raise AbiquoUnavailable(
                f"Abiquo could not be reached for {method} {_safe(url)} {_attempts(attempts)} ({exc}).",
                url=_safe(url),
            ) from exc
        except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
            raise AbiquoProtocolError(
                f"Cannot send {method} {_safe(url)} to Abiquo ({exc}).", url=_safe(url)
            ) from exc
        return response

    def _check_origin(self, url: str) -> None:
        if _origin(url) != self._origin:
            raise AbiquoProtocolError(
                f"Refusing to send the connector's credentials to {_safe(url)}: it is outside the configured "
                f"Abiquo API {_safe(self._base_url)}.",
                url=_safe(url),
            )

    def _check(self, response: httpx2.Response) -> None:
        if not response.is_success:
            raise self._error_for(response)

    def _error_for(self, response: httpx2.Response) -> AbiquoError:
        """The error for a non-2xx answer below 500 (the retry loop has dealt with 5xx)."""
        method, url, status = response.request.method, _safe(str(response.url)), response.status_code
        code, message = error_of(response.content, response.headers.get("content-type"))
        answered = f"Abiquo answered {method} {url} with {status}{_detail(code, message)}"
        if status == 401:
            return AbiquoAuthError(
                f"{answered}: it refused the connector's credentials; check abiquo.username and "
                "abiquo.password.",
                status=status,
                url=url,
            )
        if status == 403:
            return AbiquoAuthError(
                f"{answered}: user {self._settings.username!r} lacks the privilege for it.",
                status=status,
                url=url,
            )
        if status == 404:
            return AbiquoNotFound(f"{answered}.", status=status, url=url)
        return AbiquoProtocolError(
            f"{answered}, which the connector does not expect.", status=status, url=url
        )

    def _unreadable(self, response: httpx2.Response, exc: ValueError) -> AbiquoProtocolError:
        method, url, status = response.request.method, _safe(str(response.url)), response.status_code
        return AbiquoProtocolError(
            f"Cannot read Abiquo's answer to {method} {url} ({status}): {exc}.", status=status, url=url
        )


async def _nothing() -> list[T]:
    return []


def _held_task_from(rep: Representation) -> HeldTask:
    """A task of a pending-tasks listing, read by the callback parser (the same task shape, §11.7)."""
    try:
        if isinstance(rep, JsonRepresentation):
            return payload.parse_task_json(rep.data)
        if isinstance(rep, XmlRepresentation):
            return payload.parse_task_xml(rep.element)
    except PayloadError as exc:
        raise ValueError(str(exc)) from exc
    raise TypeError(f"unknown representation {type(rep).__name__}")


def _with_query(url: str, **params: int) -> str:
    """The URL with these query parameters set (replacing any of the same name), the others kept."""
    parts = urlsplit(url)
    kept = [
        (name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name not in params
    ]
    query = urlencode([*kept, *((name, str(value)) for name, value in params.items())])
    return urlunsplit(parts._replace(query=query))


def _task_href_of(action_href: str) -> str | None:
    """`…/tasks/{taskId}` from `…/tasks/{taskId}/action/continue` (or `/cancel`)."""
    head, sep, _action = action_href.rstrip("/").rpartition("/action/")
    return head if sep and head else None


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    """The TLS context of every client in this process: building one reads the whole CA bundle, a few
    tens of milliseconds each time a client opens (each sign-in check, each `check`, each test)."""
    return httpx2.create_ssl_context(verify=verify)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def _safe(url: str) -> str:
    """The URL without any `user:password@`, for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _detail(code: str | None, message: str | None) -> str:
    if code and message:
        return f" ({code}: {message})"
    if code or message:
        return f" ({code or message})"
    return ""


def _attempts(attempts: int) -> str:
    return "after 1 attempt" if attempts == 1 else f"after {attempts} attempts"
