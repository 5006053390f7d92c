"""The dashboard's session cookies and CSRF tokens (web/sessions.py) and its brake on wrong passwords
(web/throttle.py), on their own: no app, no clock but the one each test passes."""

from __future__ import annotations

import time

from itsdangerous import URLSafeTimedSerializer

from abiquo_workflow.web.sessions import SessionKeeper
from abiquo_workflow.web.throttle import ADDRESS_FACTOR, WINDOW, SignInThrottle
from tests.conftest import TEST_SECRET_KEY

VIEWER = {"actor": "Alice Smith <alice.smith@acme.example>", "role": "approver"}


def keeper(lifetime: int = 3600, key: str = TEST_SECRET_KEY) -> SessionKeeper:
    return SessionKeeper(key, lifetime=lifetime, secure=False)


def cookie_of(keeper: SessionKeeper, data: dict[str, str]) -> str:
    """The cookie value `keeper.store` would set for a new session holding `data`."""
    from starlette.responses import Response

    response = Response()
    keeper.store(response, keeper.new(data))
    header = response.headers["set-cookie"]
    return header.split(";", 1)[0].split("=", 1)[1]


def test_a_stored_session_reads_back_as_it_was() -> None:
    sessions = keeper()
    value = cookie_of(sessions, VIEWER)

    session = sessions.read(value)

    assert session is not None and session.signed_in and session.data == VIEWER


def test_a_session_past_its_lifetime_is_refused() -> None:
    sessions = keeper(lifetime=60)
    value = cookie_of(sessions, VIEWER)

    assert sessions.read(value, now=time.time() + 30) is not None
    assert sessions.read(value, now=time.time() + 61) is None


def test_a_changed_cookie_is_refused() -> None:
    sessions = keeper()
    value = cookie_of(sessions, VIEWER)
    body, _, signature = value.rpartition(".")

    assert sessions.read(body + "." + signature[::-1]) is None
    assert sessions.read("A" + value[1:]) is None


def test_a_cookie_signed_with_another_key_is_refused() -> None:
    other = keeper(key="another-secret-key-of-enough-variety-0123")

    assert keeper().read(cookie_of(other, VIEWER)) is None


def test_a_cookie_signed_with_the_key_but_another_purpose_is_refused() -> None:
    forged = URLSafeTimedSerializer(TEST_SECRET_KEY, salt="abiquo-workflow/action-link/v2").dumps(
        {"s": "x", "t": int(time.time()), "d": {**VIEWER, "role": "admin"}}
    )

    assert keeper().read(str(forged)) is None


def test_each_session_has_its_own_csrf_token() -> None:
    sessions = keeper()
    one, two = sessions.new(), sessions.new()

    assert sessions.csrf_ok(one, sessions.csrf_token(one))
    assert not sessions.csrf_ok(two, sessions.csrf_token(one))
    assert not sessions.csrf_ok(one, None) and not sessions.csrf_ok(None, sessions.csrf_token(one))


def test_signing_in_starts_a_new_session_id() -> None:
    sessions = keeper()

    assert sessions.new().session_id != sessions.new(VIEWER).session_id


def test_the_cookie_is_secure_under_the_host_prefix_over_https() -> None:
    from starlette.responses import Response

    sessions = SessionKeeper(TEST_SECRET_KEY, lifetime=60, secure=True)
    response = Response()
    sessions.store(response, sessions.new())

    header = response.headers["set-cookie"].lower()
    assert header.startswith("__host-awf_session=") and "; secure" in header and "httponly" in header


def test_wrong_passwords_stop_a_user_name_for_the_window() -> None:
    throttle = SignInThrottle(3)
    for n in range(3):
        assert throttle.wait("asmith", "10.0.0.1", now=n) == 0
        throttle.failed("asmith", "10.0.0.1", now=n)

    assert throttle.wait("ASmith ", "10.0.0.2", now=10) == WINDOW - 10  # the name, whatever its case
    assert throttle.wait("asmith", "10.0.0.1", now=WINDOW) == 0  # the oldest failure has aged out
    assert throttle.wait("bjones", "10.0.0.9", now=10) == 0


def test_an_address_may_fail_more_often_than_one_name() -> None:
    throttle = SignInThrottle(2)
    for n in range(2 * ADDRESS_FACTOR):
        throttle.failed(f"user{n}", "10.0.0.1", now=0)

    assert throttle.wait("someone-else", "10.0.0.1", now=1) > 0
    assert throttle.wait("someone-else", "10.0.0.2", now=1) == 0


def test_a_good_password_clears_the_name_s_count() -> None:
    throttle = SignInThrottle(2)
    throttle.failed("asmith", "10.0.0.1", now=0)
    throttle.succeeded("asmith")
    throttle.failed("asmith", "10.0.0.1", now=1)

    assert throttle.wait("asmith", "10.0.0.1", now=2) == 0
