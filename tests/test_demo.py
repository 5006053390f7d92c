"""`abiquo-workflow demo` as a person runs it: a real subprocess, driven only over HTTP through the
simulator's control surface, the inbox page and the connector's decision pages, then stopped with Ctrl-C."""

from __future__ import annotations

import random
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx2
import pytest

from tests.cli_support import EXECUTABLE, WAIT, CliProcess, Ended, invoke, wait_until_answers
from tests.conftest import CLIENT_TLS

HOST = "127.0.0.1"

#: Every test here runs the command line in subprocesses.
pytestmark = pytest.mark.slow


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


#: Below Linux's ephemeral range (32768 and up by default), from which the kernel hands out the ports
#: of outgoing connections and of `bind(0)`: a port there may be taken between the check and the demo's
#: own bind by any other test's client.
DEMO_PORTS = range(20_000, 32_000)


def four_free_ports() -> int:
    """A base port P with P..P+3 all free."""
    for _ in range(200):
        base = random.choice(DEMO_PORTS)
        if all(_free(base + n) for n in range(4)):
            return base
    raise AssertionError("no four consecutive free ports found")


class Demo:
    """One run of the demo on ports P..P+3."""

    def __init__(self, folder: Path, data_dir: Path, port: int) -> None:
        self.port = port
        self.connector, self.simulator, self.inbox = (f"http://{HOST}:{port + n}" for n in range(3))
        self.process = CliProcess(folder, "demo", "--port", str(port), "--data-dir", str(data_dir))

    def wait_until_ready(self) -> None:
        self.process.wait_for_output("abiquo-workflow demo is running.")
        for url in (f"{self.connector}/healthz", f"{self.simulator}/_sim/settings", f"{self.inbox}/"):
            assert wait_until_answers(url, self.process).status_code == 200, url
        with socket.create_connection((HOST, self.port + 3), timeout=WAIT) as smtp:
            assert smtp.recv(3) == b"220"

    def stop(self) -> Ended:
        return self.process.stop(signal.SIGINT, timeout=15)


StartDemo = Callable[..., Demo]


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[StartDemo]:
    started: list[Demo] = []

    def start(data_dir: Path, name: str = "demo", port: int | None = None) -> Demo:
        demo = Demo(tmp_path / name, data_dir, port or four_free_ports())
        started.append(demo)
        demo.wait_until_ready()
        return demo

    yield start
    for demo in started:
        demo.process.kill()


class _Page(HTMLParser):
    """The links and the first form of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.form_action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "a" and "href" in attributes:
            self.hrefs.append(attributes["href"])
        elif tag == "form" and self.form_action is None:
            self.form_action, self._in_form = attributes.get("action", ""), True
        elif tag in ("input", "textarea") and self._in_form and "name" in attributes:
            self.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def parse_page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def request_vapp_deploy(demo: Demo) -> None:
    """What the simulator page's form posts for "Deploy vApp 1 (Web tier & cache)"."""
    answer = httpx2.post(
        f"{demo.simulator}/_sim/requests",
        data={"action": "deploy", "target": "vapp:1", "user": "", "style": "json", "hrefs": "relative"},
        timeout=WAIT,
        verify=CLIENT_TLS,
    )
    assert answer.status_code == 303, answer.text


def first_accept_link(demo: Demo) -> str:
    """Read message 1 on the inbox page and return its first Accept link."""
    deadline = time.monotonic() + WAIT
    while (
        message := httpx2.get(f"{demo.inbox}/messages/1", timeout=WAIT, verify=CLIENT_TLS)
    ).status_code == 404:
        assert time.monotonic() < deadline, "no approval email arrived in the demo's inbox"
        time.sleep(0.1)
    assert message.status_code == 200
    assert "Approval needed" in message.text
    html = httpx2.get(f"{demo.inbox}/messages/1/html", timeout=WAIT, verify=CLIENT_TLS)
    assert html.status_code == 200
    links = [unescape(href) for href in parse_page(html.text).hrefs if "/accept?" in href]
    assert links, html.text
    return links[0]


def accept(link: str) -> httpx2.Response:
    """Open the link (the confirmation page), then submit its form as the button does."""
    confirmation = httpx2.get(link, timeout=WAIT, verify=CLIENT_TLS)
    assert confirmation.status_code == 200, confirmation.text
    form = parse_page(confirmation.text)
    assert form.form_action is not None
    return httpx2.post(urljoin(link, form.form_action), data=form.fields, timeout=WAIT, verify=CLIENT_TLS)


def test_the_demo_runs_the_whole_loop_over_http_and_stops_on_ctrl_c(
    tmp_path: Path, start_demo: StartDemo
) -> None:
    """Also, while the demo serves, the command line it prints works on it (run in-process here, to
    start no further subprocess): `check` reaches the demo's database, simulator and inbox through the
    config the demo wrote, and `tasks list` reads the demo's database."""
    data_dir = tmp_path / "data"
    demo = start_demo(data_dir)

    request_vapp_deploy(demo)
    link = first_accept_link(demo)
    task_id = link.split("task=", 1)[1].split("&", 1)[0]
    decided = accept(link)
    deadline = time.monotonic() + WAIT
    while not (calls := httpx2.get(f"{demo.simulator}/_sim/calls", timeout=WAIT, verify=CLIENT_TLS).json()):
        assert time.monotonic() < deadline, "the simulator got no continue call"
        time.sleep(0.1)
    config = (data_dir / "abiquo-workflow.toml").resolve()
    checked = invoke("--config", str(config), "check")
    listed = invoke("--config", str(config), "tasks", "list", "--decision", "accepted")
    ended = demo.stop()

    assert decided.status_code == 200, decided.text
    assert [(c["task_id"], c["action"], c["status"]) for c in calls] == [(task_id, "continue", 204)]
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.rstrip().endswith("demo stopped")
    assert "Traceback" not in ended.stderr
    assert f"{EXECUTABLE} --config {config} tasks list" in ended.stdout
    assert config.stat().st_mode & 0o777 == 0o600
    assert checked.exit_code == 0, checked.output
    assert [line.split()[:2] for line in checked.stdout.splitlines()] == [
        ["config", "OK"],
        ["database", "OK"],
        ["abiquo", "OK"],
        ["smtp", "OK"],
    ]
    assert listed.exit_code == 0, listed.output
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == [task_id]
    assert "jdoe" in listed.stdout.splitlines()[1].split()


def test_the_demo_refuses_busy_ports_with_exit_2(tmp_path: Path) -> None:
    base = four_free_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((HOST, base + 2))
        busy.listen()
        # It stops before starting anything, so the command runs in-process.
        ended = invoke("demo", "--port", str(base), "--data-dir", str(tmp_path / "data"))

    assert ended.exit_code == 2
    assert f"port(s) {base + 2} are in use; pass --port to use other ones" in ended.stderr
    assert "Traceback" not in ended.stderr


def test_an_approval_link_still_works_after_the_demo_restarts(tmp_path: Path, start_demo: StartDemo) -> None:
    data_dir = tmp_path / "data"
    first = start_demo(data_dir, "first")
    key = (data_dir / "secret_key").read_text(encoding="utf-8")
    request_vapp_deploy(first)
    link = first_accept_link(first)
    assert first.stop().returncode == 0

    second = start_demo(data_dir, "second", first.port)
    decided = accept(link)
    assert second.stop().returncode == 0

    assert (data_dir / "secret_key").read_text(encoding="utf-8") == key
    assert (data_dir / "secret_key").stat().st_mode & 0o777 == 0o600
    assert decided.status_code == 200, decided.text


def test_the_printed_login_signs_in_to_the_dashboard_and_approves_there(
    tmp_path: Path, start_demo: StartDemo
) -> None:
    """What the README's quick start promises: sign in with the login the demo prints, and approve a
    simulated deploy from the dashboard."""
    demo = start_demo(tmp_path / "data")
    demo.process.wait_for_output("Press Ctrl-C to stop.")
    login = re.search(r"sign in as (\S+) / (\S+),", demo.process.stdout)
    assert login is not None, demo.process.stdout
    assert f"Decide it             {demo.connector}/" in demo.process.stdout
    request_vapp_deploy(demo)
    first_accept_link(demo)  # triaged: the approval emails are out

    with httpx2.Client(verify=CLIENT_TLS, base_url=demo.connector, timeout=WAIT) as browser:
        form = parse_page(browser.get("/").text).fields
        signed_in = browser.post("/sign-in", data={**form, "username": login[1], "password": login[2]})
        assert signed_in.status_code == 303, signed_in.text
        listed = browser.get("/")
        [request_page] = [href for href in parse_page(listed.text).hrefs if href.startswith("/requests/")]
        page = browser.get(request_page).text
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None and "Accept all 3 pending" in page
        decided = browser.post(f"{request_page}/decide", data={"csrf": token[1], "choice": "accept:all"})
    deadline = time.monotonic() + WAIT
    while (
        len(calls := httpx2.get(f"{demo.simulator}/_sim/calls", timeout=WAIT, verify=CLIENT_TLS).json()) < 3
    ):
        assert time.monotonic() < deadline, f"the simulator got {len(calls)} continue calls of 3"
        time.sleep(0.1)
    assert demo.stop().returncode == 0

    assert decided.status_code == 303 and "done=accepted" in decided.headers["location"]
    assert sorted(c["action"] for c in calls) == ["continue"] * 3
