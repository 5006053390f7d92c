"""The files in deploy/: each parses, and says what the README's "Deployment" section promises.

systemd units: `systemd-analyze verify` and `security` when systemd-analyze is installed, and their
keys read with configparser always. nginx: `nginx -t`, and a real nginx in front of two stub replicas,
when nginx is installed; a small parser of its syntax always. The example TOML: loaded by the
connector's own settings code. The Containerfile: read instruction by instruction (no image is built:
that needs a container engine).
"""

from __future__ import annotations

import configparser
import functools
import http.client
import http.server
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme

from abiquo_workflow.config import Settings, build_settings, load_settings
from abiquo_workflow.domain import Action
from abiquo_workflow.runtime import link_signer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
NGINX_CONF = DEPLOY / "nginx" / "abiquo-workflow.conf"
EXAMPLE_TOML = DEPLOY / "abiquo-workflow.example.toml"
CONTAINERFILE = DEPLOY / "Containerfile"

SERVE_UNIT = "abiquo-workflow.service"
WORKER_UNIT = "abiquo-workflow-worker.service"
MIGRATE_UNIT = "abiquo-workflow-migrate.service"
UNITS = [SERVE_UNIT, WORKER_UNIT, MIGRATE_UNIT]
#: The units that keep running (migrate is a oneshot).
SERVICES = [SERVE_UNIT, WORKER_UNIT]

SERVICE_USER = "abiquo-workflow"
STATE_DIRECTORY = Path("/var/lib/abiquo-workflow")
#: Where the units run the installed command from; tests point a copy elsewhere.
INSTALLED_COMMAND = "/opt/abiquo-workflow/bin/abiquo-workflow"


def example_settings(environ: dict[str, str] | None = None) -> Settings:
    return load_settings(EXAMPLE_TOML, environ={} if environ is None else environ).settings


def networks(cidrs: list[str] | tuple[str, ...]) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return {ipaddress.ip_network(cidr, strict=False) for cidr in cidrs}


# ---------------------------------------------------------------------------------------------------
# systemd units
# ---------------------------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    """A unit file as configparser reads it: keys keep their case; a repeated key keeps its last value."""
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, delimiters=("=",), empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text(encoding="utf-8"), source=name)
    return parser


def exec_start(name: str) -> list[str]:
    return shlex.split(unit(name)["Service"]["ExecStart"])


def command_of(argv: list[str]) -> list[str]:
    """The subcommand and its options: what follows `abiquo-workflow` and its global options."""
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("--config", "-c", "--legacy-config") else rest[1:]
    return rest


def config_option(argv: list[str]) -> str | None:
    for option, value in itertools.pairwise(argv):
        if option in ("--config", "-c"):
            return value
    return None


_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def seconds(span: str) -> float:
    """A systemd time span ("90", "90s", "1min 30s", "infinity") in seconds."""
    if span.strip() == "infinity":
        return float("inf")
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(number) * _TIME_UNITS[unit_name or "s"] for number, unit_name in parts)


def installed_copy(tmp_path: Path) -> Path:
    """The units, in tmp_path, with ExecStart pointing at the connector installed in this venv.

    `systemd-analyze verify` refuses a unit whose command does not exist; /opt/abiquo-workflow is where
    a real install puts it, so the copy links that name to the one this test runs with.
    """
    command = tmp_path / "bin" / "abiquo-workflow"
    command.parent.mkdir()
    command.symlink_to(Path(sys.executable).with_name("abiquo-workflow"))
    for name in UNITS:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        assert INSTALLED_COMMAND in text
        (tmp_path / name).write_text(text.replace(INSTALLED_COMMAND, str(command)), encoding="utf-8")
    return tmp_path


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed")
    return found


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    units = installed_copy(tmp_path)
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(units / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and bad values are only warnings (exit 0), naming the file and line: none allowed.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if name in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@pytest.mark.parametrize("name", UNITS)
def test_unit_exposure_by_systemd_analyze_security_is_low(name: str, tmp_path: Path) -> None:
    units = installed_copy(tmp_path)
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(units / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip("this systemd-analyze cannot assess a unit file offline (systemd < 250)")
    level = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert level is not None, result.stdout + result.stderr
    # 0 is a fully sandboxed service; a unit with no sandboxing at all rates about 9 ("UNSAFE").
    assert float(level.group(1)) <= 2.0


def test_serve_unit_runs_serve_with_the_config_file() -> None:
    argv = exec_start(SERVE_UNIT)
    assert argv[0] == INSTALLED_COMMAND
    assert config_option(argv) == "/etc/abiquo-workflow/abiquo-workflow.toml"
    assert command_of(argv) == ["serve"]


def test_worker_unit_runs_worker_with_the_config_file() -> None:
    argv = exec_start(WORKER_UNIT)
    assert argv[0] == INSTALLED_COMMAND
    assert config_option(argv) == "/etc/abiquo-workflow/abiquo-workflow.toml"
    assert command_of(argv) == ["worker"]


def test_migrate_unit_runs_migrate_once() -> None:
    argv = exec_start(MIGRATE_UNIT)
    assert config_option(argv) == "/etc/abiquo-workflow/abiquo-workflow.toml"
    assert command_of(argv) == ["migrate"]
    assert unit(MIGRATE_UNIT)["Service"]["Type"] == "oneshot"
    assert "Restart" not in unit(MIGRATE_UNIT)["Service"]


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_ordered_after_the_migration_without_requiring_it(name: str) -> None:
    # Required, every restart of every replica would migrate, and machines restarting together would
    # migrate at once; migrating is a pre-deploy step, once per release.
    section = unit(name)["Unit"]
    assert MIGRATE_UNIT in section["After"].split()
    for requirement in ("Requires", "Requisite", "BindsTo", "Wants", "Upholds"):
        assert MIGRATE_UNIT not in section.get(requirement, "").split()


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_as_the_dedicated_user(name: str) -> None:
    service = unit(name)["Service"]
    assert service["User"] == SERVICE_USER
    assert service["Group"] == SERVICE_USER
    assert service.get("DynamicUser", "no") == "no"


@pytest.mark.parametrize("name", UNITS)
def test_unit_reads_secrets_from_an_environment_file(name: str) -> None:
    service = unit(name)["Service"]
    # Without a leading "-": a missing secrets file fails the start instead of starting without them.
    assert service["EnvironmentFile"] == "/etc/abiquo-workflow/secrets.env"
    text = (SYSTEMD / name).read_text(encoding="utf-8")
    assert not re.search(r"^Environment=.*AWF_", text, re.MULTILINE)


@pytest.mark.parametrize("name", SERVICES)
def test_service_stops_with_sigterm(name: str) -> None:
    service = unit(name)["Service"]
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert service.get("KillMode", "control-group") in ("control-group", "mixed")


@pytest.mark.parametrize("name", SERVICES)
def test_service_gives_running_jobs_longer_than_the_lease_to_finish(name: str) -> None:
    timeout = seconds(unit(name)["Service"]["TimeoutStopSec"])
    assert timeout >= 60
    assert timeout > example_settings().worker.lease
    assert timeout > Settings().worker.lease


@pytest.mark.parametrize("name", SERVICES)
def test_service_restarts_after_a_failure_but_not_a_configuration_error(name: str) -> None:
    service = unit(name)["Service"]
    assert service["Restart"] in ("on-failure", "always")
    assert seconds(service["RestartSec"]) > 0
    # Exit status 2: the configuration or the arguments are wrong (cli.py), which a restart cannot mend.
    assert "2" in service["RestartPreventExitStatus"].split()


@pytest.mark.parametrize("name", UNITS)
def test_unit_is_sandboxed(name: str) -> None:
    service = unit(name)["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] in ("yes", "read-only", "tmpfs")
    assert service["PrivateTmp"] == "yes"
    assert service["PrivateDevices"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


@pytest.mark.parametrize("name", UNITS)
def test_unit_may_write_only_to_the_state_directory(name: str) -> None:
    service = unit(name)["Service"]
    for path in service.get("ReadWritePaths", "").split():
        assert Path(path.lstrip("-")).is_relative_to(STATE_DIRECTORY)
    assert service.get("StateDirectory", STATE_DIRECTORY.name) == STATE_DIRECTORY.name
    for other in ("CacheDirectory", "LogsDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert other not in service


def test_worker_unit_writes_no_files() -> None:
    service = unit(WORKER_UNIT)["Service"]
    assert "StateDirectory" not in service
    assert "ReadWritePaths" not in service


def test_sqlite_in_the_example_comment_lives_in_the_state_directory() -> None:
    commented = re.search(r'^#\s*url = "(sqlite:[^"]+)"', EXAMPLE_TOML.read_text(encoding="utf-8"), re.M)
    assert commented is not None
    url = commented.group(1)
    settings = example_settings({"AWF_DATABASE__URL": url})
    database = Path(settings.database.url.split(":///", 1)[1])
    assert database.is_absolute()
    assert database.parent == STATE_DIRECTORY
    assert unit(SERVE_UNIT)["Service"]["StateDirectory"] == STATE_DIRECTORY.name


# ---------------------------------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def walk(self) -> Iterator[Directive]:
        for child in self.block or []:
            yield child
            yield from child.walk()


_NGINX_TOKEN = re.compile(r"""\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|([^\s{};"'#]+)""")


def nginx_tokens(text: str) -> Iterator[str]:
    """nginx's words: quoted strings unquoted, `{`, `}` and `;` on their own; comments and blanks out."""
    position = 0
    while position < len(text):
        match = _NGINX_TOKEN.match(text, position)
        if match is None:
            raise ValueError(
                f"cannot read nginx syntax at offset {position}: {text[position : position + 20]!r}"
            )
        position = match.end()
        double, single, punctuation, word = match.groups()
        for token in (double, single, punctuation, word):
            if token is not None:
                yield token
                break


def parse_nginx(text: str) -> Directive:
    """The configuration as a tree; ValueError on an unclosed or stray brace or a missing `;`."""
    root = Directive("", [], [])
    stack = [root]
    words: list[str] = []
    for token in nginx_tokens(text):
        if token == ";":
            if not words:
                raise ValueError("a `;` with no directive before it")
            stack[-1].block.append(Directive(words[0], words[1:]))  # type: ignore[union-attr]
            words = []
        elif token == "{":
            if not words:
                raise ValueError("a `{` with no directive before it")
            block = Directive(words[0], words[1:], [])
            stack[-1].block.append(block)  # type: ignore[union-attr]
            stack.append(block)
            words = []
        elif token == "}":
            if words:
                raise ValueError(f"`{' '.join(words)}` is not ended by `;`")
            if len(stack) == 1:
                raise ValueError("a `}` closes no block")
            stack.pop()
        else:
            words.append(token)
    if words:
        raise ValueError(f"`{' '.join(words)}` is not ended by `;`")
    if len(stack) != 1:
        raise ValueError(f"{len(stack) - 1} block(s) not closed")
    return root


def nginx() -> Directive:
    return parse_nginx(NGINX_CONF.read_text(encoding="utf-8"))


def tls_server() -> Directive:
    servers = [s for s in nginx().find("server") if any("ssl" in d.args for d in s.find("listen"))]
    assert len(servers) == 1
    return servers[0]


def location(server: Directive, *args: str) -> Directive:
    found = [d for d in server.find("location") if d.args == list(args)]
    assert len(found) == 1, f"location {' '.join(args)}"
    return found[0]


def nginx_size(value: str) -> int:
    number, suffix = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[suffix.lower()]


def test_nginx_syntax_is_balanced() -> None:
    tree = nginx()
    assert {d.name for d in tree.block or []} == {"upstream", "map", "log_format", "server"}


def test_nginx_parser_refuses_an_unclosed_block() -> None:
    # The check above means something only if the parser does refuse what nginx would.
    with pytest.raises(ValueError, match="not closed"):
        parse_nginx("server { location / { return 200; }")
    with pytest.raises(ValueError, match="closes no block"):
        parse_nginx("server { } }")
    with pytest.raises(ValueError, match="not ended"):
        parse_nginx("server { listen 80 }")


def test_nginx_terminates_tls_and_sends_plain_http_there() -> None:
    server = tls_server()
    assert {tuple(d.args) for d in server.find("listen")} == {("443", "ssl"), ("[::]:443", "ssl")}
    assert server.find("ssl_certificate") and server.find("ssl_certificate_key")
    assert server.find("ssl_protocols")[0].args == ["TLSv1.2", "TLSv1.3"]
    plain = [s for s in nginx().find("server") if not any("ssl" in d.args for d in s.find("listen"))]
    assert len(plain) == 1
    assert plain[0].find("return")[0].args == ["301", "https://$host$request_uri"]


def test_nginx_lets_only_the_listed_networks_post_callbacks() -> None:
    rules = [d for d in location(tls_server(), "/callback").block or [] if d.name in ("allow", "deny")]
    assert [d.name for d in rules[:-1]] == ["allow"] * (len(rules) - 1)
    assert len(rules) >= 2
    assert rules[-1].name == "deny"
    assert rules[-1].args == ["all"]
    assert all(d.args != ["all"] for d in rules[:-1])


def test_nginx_callback_networks_are_the_example_callback_allow() -> None:
    allowed = [d.args[0] for d in location(tls_server(), "/callback").find("allow")]
    assert networks(allowed) == networks(example_settings().server.callback_allow)


def test_nginx_leaves_the_pages_and_health_checks_open_to_people() -> None:
    everything = location(tls_server(), "/")
    assert not everything.find("deny")
    assert not everything.find("allow")
    assert everything.find("proxy_pass")[0].args == ["http://abiquo_workflow"]
    exact = {tuple(d.args) for d in tls_server().find("location")}
    assert ("=", "/healthz") not in exact
    assert ("=", "/readyz") not in exact


def test_nginx_keeps_metrics_to_the_replicas_themselves() -> None:
    assert location(tls_server(), "=", "/metrics").find("deny")[0].args == ["all"]


def test_nginx_forwards_the_client_address_and_scheme() -> None:
    server = tls_server()
    headers = {d.args[0].lower(): d.args[1] for d in server.find("proxy_set_header")}
    # Replaced, not appended to ($proxy_add_x_forwarded_for): this nginx is the edge.
    assert headers["x-forwarded-for"] == "$remote_addr"
    assert headers["x-forwarded-proto"] == "$scheme"
    # A location with proxy_set_header of its own would inherit none of the server's.
    for block in server.find("location"):
        assert not block.find("proxy_set_header")


def test_nginx_body_limit_is_max_body() -> None:
    limits = [d for d in nginx().walk() if d.name == "client_max_body_size"]
    assert len(limits) == 1
    assert nginx_size(limits[0].args[0]) == example_settings().server.max_body


def test_nginx_access_log_lines_carry_no_query_string() -> None:
    tree = nginx()
    formats = {d.args[0]: "".join(d.args[1:]) for d in tree.find("log_format")}
    for server in tree.find("server"):
        # A server without access_log of its own would log with nginx.conf's "combined": the full URL.
        logs = [d for d in server.walk() if d.name == "access_log"]
        assert logs
        for log in logs:
            assert log.args == ["off"] or log.args[1] in formats
    for layout in formats.values():
        # $uri would log /callback/<token> whole: the path goes through the map that masks the token.
        variables = set(re.findall(r"\$(\w+)", layout))
        assert not variables & {"request", "request_uri", "uri", "document_uri", "args", "query_string"}
        assert not any(name.startswith("arg_") for name in variables)
    masks = [d for d in tree.find("map") if d.args[0] == "$uri"]
    assert len(masks) == 1
    assert [d.args for d in masks[0].block or [] if d.name.startswith("~^/callback")] == [
        ["/callback/<token>"]
    ]
    assert all(masks[0].args[1] in layout for layout in formats.values())


def test_nginx_balances_two_serve_replicas_on_the_bind_port() -> None:
    upstream = nginx().find("upstream")
    assert len(upstream) == 1
    replicas = [d.args[0] for d in upstream[0].find("server")]
    assert len(set(replicas)) == 2
    assert {int(r.rpartition(":")[2]) for r in replicas} == {example_settings().server.port}
    proxied = {d.args[0] for d in tls_server().walk() if d.name == "proxy_pass"}
    assert proxied == {f"http://{upstream[0].args[0]}"}


# nginx itself, when installed ----------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        pytest.skip("nginx is not installed")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Site:
    """A copy of the nginx configuration on loopback ports, with stub replicas behind it."""

    directory: Path
    main: Path
    https_port: int
    ca: trustme.CA
    seen: list[tuple[str, str, dict[str, str]]]

    @property
    def access_log(self) -> Path:
        return self.directory / "abiquo-workflow.access.log"

    @functools.cached_property
    def tls(self) -> ssl.SSLContext:
        """Trusts the site's CA; built once (a default context reads the system's CA store)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> int:
        connection = http.client.HTTPSConnection("127.0.0.1", self.https_port, context=self.tls, timeout=10)
        try:
            connection.request(method, path, body=body or None, headers=headers or {})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


def site_copy(directory: Path, https_port: int, http_port: int, replicas: list[int], ca: trustme.CA) -> Path:
    """The configuration as shipped, but on loopback ports, with a test certificate and its logs in
    `directory`."""
    certificate = ca.issue_cert("workflow.example.com", "127.0.0.1")
    certificate.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    certificate.private_key_pem.write_to_path(str(directory / "key.pem"))
    text = NGINX_CONF.read_text(encoding="utf-8")
    text = re.sub(r"^\s*listen \[::\]:\d+.*;\n", "", text, flags=re.MULTILINE)
    text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    upstreams = iter(replicas)
    text = re.sub(r"server 10\.20\.0\.\d+:8080", lambda _: f"server 127.0.0.1:{next(upstreams)}", text)
    text = re.sub(r"ssl_certificate \S+;", f"ssl_certificate {directory / 'cert.pem'};", text)
    text = re.sub(r"ssl_certificate_key \S+;", f"ssl_certificate_key {directory / 'key.pem'};", text)
    text = text.replace("/var/log/nginx/", f"{directory}/")
    (directory / "site.conf").write_text(text, encoding="utf-8")
    main = directory / "nginx.conf"
    main.write_text(
        f"pid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log;\n"
        "events {}\n"
        "http {\n"
        f"    client_body_temp_path {directory}/body;\n"
        f"    proxy_temp_path {directory}/proxy;\n"
        f"    include {directory}/site.conf;\n"
        "}\n",
        encoding="utf-8",
    )
    return main


class StubReplica(http.server.BaseHTTPRequestHandler):
    """Answers 200 to everything and notes what nginx forwarded."""

    seen: list[tuple[str, str, dict[str, str]]]

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    binary = nginx_binary()
    directory = tmp_path_factory.mktemp("nginx")
    seen: list[tuple[str, str, dict[str, str]]] = []
    handler = type("Recorder", (StubReplica,), {"seen": seen})
    replicas = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    threads = [threading.Thread(target=r.serve_forever, daemon=True) for r in replicas]
    for thread in threads:
        thread.start()
    ca = trustme.CA()
    https_port = free_port()
    main = site_copy(directory, https_port, free_port(), [r.server_address[1] for r in replicas], ca)
    process = subprocess.Popen(
        [
            binary,
            "-e",
            "stderr",
            "-p",
            f"{directory}/",
            "-c",
            str(main),
            "-g",
            "daemon off; master_process off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {process.communicate()[1]!r}") from None
                time.sleep(0.05)
        yield Site(directory, main, https_port, ca, seen)
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        for replica in replicas:
            replica.shutdown()
            replica.server_close()


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    binary = nginx_binary()
    main = site_copy(tmp_path, free_port(), free_port(), [free_port(), free_port()], trustme.CA())
    result = subprocess.run(
        [binary, "-t", "-e", "stderr", "-p", f"{tmp_path}/", "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_refuses_a_callback_from_elsewhere(site: Site) -> None:
    before = len(site.seen)
    assert site.request("POST", "/callback", {"content-type": "application/json"}, b"{}") == 403
    assert site.request("POST", "/callback/some-token", {"content-type": "application/json"}, b"{}") == 403
    assert len(site.seen) == before


def test_nginx_replaces_a_forged_forwarded_for_with_the_client(site: Site) -> None:
    assert site.request("GET", "/healthz", {"x-forwarded-for": "10.10.0.17"}) == 200
    method, path, headers = site.seen[-1]
    assert (method, path) == ("GET", "/healthz")
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"


def test_nginx_logs_decision_links_without_their_token(site: Site) -> None:
    assert site.request("GET", "/accept?task=T-1&token=SECRET-IN-QUERY") == 200
    assert site.request("POST", "/callback/SECRET-IN-PATH", {}, b"{}") == 403
    # nginx logs a request once it has answered it; a third one answered means the two are logged.
    assert site.request("GET", "/healthz") == 200
    log = site.access_log.read_text(encoding="utf-8")
    assert "GET /accept HTTP/1.1" in log
    assert "POST /callback/<token> HTTP/1.1" in log
    assert "SECRET" not in log


def test_nginx_passes_a_body_of_max_body_and_refuses_one_byte_more(site: Site) -> None:
    limit = example_settings().server.max_body
    assert site.request("POST", "/accept?task=T-1", {"content-type": "text/plain"}, b"x" * limit) == 200
    context = ssl.create_default_context()
    site.ca.configure_trust(context)
    connection = http.client.HTTPSConnection("127.0.0.1", site.https_port, context=context, timeout=10)
    try:
        # nginx answers from the Content-Length alone; the body need not be sent.
        connection.putrequest("POST", "/accept?task=T-1")
        connection.putheader("content-length", str(limit + 1))
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        assert response.status == 413
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------------
# The example settings
# ---------------------------------------------------------------------------------------------------


def test_example_config_loads_with_the_connectors_settings() -> None:
    data = tomllib.loads(EXAMPLE_TOML.read_text(encoding="utf-8"))
    assert build_settings(data, environ={}) == example_settings()


def test_example_config_believes_forwarded_headers_only_from_the_proxy() -> None:
    proxies = networks(example_settings().server.trusted_proxies)
    assert proxies
    assert all(network.prefixlen == network.max_prefixlen for network in proxies)  # hosts, not networks


def test_example_config_lets_only_abiquo_post_callbacks() -> None:
    allowed = networks(example_settings().server.callback_allow)
    assert allowed
    assert all(network.prefixlen > 0 for network in allowed)
    assert not allowed & networks(example_settings().server.trusted_proxies)


def test_example_config_links_point_at_the_tls_side() -> None:
    public = example_settings().server.base_url
    assert public.startswith("https://")
    names = {d.args[0] for s in nginx().find("server") for d in s.find("server_name")}
    assert names == {public.removeprefix("https://")}


def test_example_config_shares_postgresql_between_replicas() -> None:
    assert example_settings().database.url.startswith("postgresql://")


def test_example_config_holds_no_secrets() -> None:
    data = tomllib.loads(EXAMPLE_TOML.read_text(encoding="utf-8"))
    keys = {f"{section}.{key}" for section, values in data.items() for key in values}
    assert not keys & {"server.secret_key", "server.callback_token", "abiquo.password", "mail.smtp_password"}
    assert urlsplit(data["database"]["url"]).password is None


def test_example_config_with_the_secrets_it_names_is_ready_to_serve() -> None:
    text = EXAMPLE_TOML.read_text(encoding="utf-8")
    named = set(re.findall(r"^#\s+(AWF_[A-Z_]+__[A-Z_]+)=", text, re.MULTILINE))
    assert {"AWF_SERVER__SECRET_KEY", "AWF_ABIQUO__PASSWORD", "AWF_MAIL__SMTP_PASSWORD"} <= named
    values = {
        "AWF_SERVER__SECRET_KEY": "kPz3-Qw9_xR7vN2mLs8tYb4cHf6jDg1eA5uW0oZi",
        "AWF_DATABASE__URL": "postgresql://abiquo_workflow:pw@db.example.com/abiquo_workflow",
    }
    environ = {name: values.get(name, "a-secret-value") for name in named}
    settings = example_settings(environ)
    assert settings.abiquo.password.get_secret_value() == "a-secret-value"
    assert settings.mail.smtp_password is not None
    signer = link_signer(settings)  # what `serve` and `worker` refuse to start without
    link = signer.task_url("T-1", Action.ACCEPT, "alice@example.com")
    assert link.startswith("https://workflow.example.com/accept?")


# ---------------------------------------------------------------------------------------------------
# Containerfile
# ---------------------------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in CONTAINERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        name, _, arguments = whole.partition(" ")
        found.append((name.upper(), arguments.strip()))
    assert not pending, "the file ends in a continuation line"
    return found


def final_stage() -> list[tuple[str, str]]:
    every = instructions()
    start = max(i for i, (name, _) in enumerate(every) if name == "FROM")
    return every[start:]


def test_containerfile_builds_on_python_3_11_slim() -> None:
    bases = [args.split()[0] for name, args in instructions() if name == "FROM"]
    assert bases
    assert set(bases) == {"python:3.11-slim"}


def test_containerfile_installs_the_project_with_uv_from_the_lock() -> None:
    runs = [args for name, args in instructions() if name == "RUN"]
    syncs = [shlex.split(args) for args in runs if args.startswith("uv sync")]
    assert syncs
    assert all("--locked" in sync and "--no-dev" in sync for sync in syncs)
    assert "--no-editable" in syncs[-1]
    copied = [args.split() for name, args in instructions() if name == "COPY" and "--from" not in args]
    assert any("uv.lock" in sources for sources in copied)


def test_containerfile_copies_only_files_the_source_tree_has() -> None:
    for name, args in instructions():
        if name == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_containerfile_runs_as_a_user_other_than_root() -> None:
    users = [args for name, args in final_stage() if name == "USER"]
    assert users
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_containerfile_health_check_fetches_healthz_with_urllib() -> None:
    checks = [args for name, args in final_stage() if name == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].partition("CMD")[2].strip()
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "HEALTHCHECK", "exec")  # valid Python
    assert "urllib.request.urlopen(" in argv[2]
    assert re.search(r"http://127\.0\.0\.1:(\d+)/healthz", argv[2])


def test_containerfile_serves_by_default() -> None:
    commands = [args for name, args in final_stage() if name == "CMD"]
    assert len(commands) == 1
    argv = json.loads(commands[0])
    assert argv[0] == "abiquo-workflow"
    assert command_of(argv) == ["serve"]


def test_containerfile_exposes_the_port_it_binds_and_checks() -> None:
    stage = final_stage()
    exposed = {args.split("/")[0] for name, args in stage if name == "EXPOSE"}
    health = next(args for name, args in stage if name == "HEALTHCHECK")
    checked = re.search(r"127\.0\.0\.1:(\d+)/healthz", health)
    baked = re.search(r"'bind = \"[^\"]*:(\d+)\"'", next(a for n, a in stage if n == "RUN" and "bind" in a))
    assert checked is not None
    assert baked is not None
    assert exposed == {checked.group(1)} == {baked.group(1)}


# ---------------------------------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------------------------------


def test_readme_deployment_section_names_every_deploy_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "[Deployment](#deployment)" in readme
    section = readme.split("\n## Deployment\n", 1)[1].split("\n## ", 1)[0]
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            assert f"deploy/{path.relative_to(DEPLOY)}" in section
