"""Action links: signed, expiring, bound to a task set, an action and an approver."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from abiquo_workflow.domain import Action
from abiquo_workflow.exceptions import TokenError
from abiquo_workflow.links import LinkSigner, parse_task_list

NOW = 1_800_000_000.0


@pytest.fixture
def signer() -> LinkSigner:
    return LinkSigner("a-test-secret", "https://wf.example.com/", ttl=3600)


def test_a_token_verifies_for_its_tasks_and_action(signer: LinkSigner) -> None:
    token = signer.token(["t1"], Action.ACCEPT, "alice@example.com", now=NOW)
    grant = signer.verify(token, ["t1"], Action.ACCEPT, now=NOW + 10)
    assert grant.approver == "alice@example.com"
    assert grant.task_ids == ("t1",)


def test_a_token_for_several_tasks_ignores_their_order(signer: LinkSigner) -> None:
    token = signer.token(["t1", "t2"], Action.DECLINE, "a@x", now=NOW)
    assert signer.verify(token, ["t2", "t1"], Action.DECLINE, now=NOW).task_ids == ("t2", "t1")


def test_a_token_is_worthless_for_another_task(signer: LinkSigner) -> None:
    token = signer.token(["t1"], Action.ACCEPT, "a@x", now=NOW)
    with pytest.raises(TokenError, match="other tasks"):
        signer.verify(token, ["t2"], Action.ACCEPT, now=NOW)


def test_a_token_for_a_subset_does_not_cover_more_tasks(signer: LinkSigner) -> None:
    token = signer.token(["t1"], Action.ACCEPT, "a@x", now=NOW)
    with pytest.raises(TokenError, match="other tasks"):
        signer.verify(token, ["t1", "t2"], Action.ACCEPT, now=NOW)


def test_an_accept_token_cannot_decline(signer: LinkSigner) -> None:
    token = signer.token(["t1"], Action.ACCEPT, "a@x", now=NOW)
    with pytest.raises(TokenError, match="made to accept, not to decline"):
        signer.verify(token, ["t1"], Action.DECLINE, now=NOW)


def test_an_expired_token_is_refused_with_its_date(signer: LinkSigner) -> None:
    token = signer.token(["t1"], Action.ACCEPT, "a@x", now=NOW)
    with pytest.raises(TokenError, match="expired on 2027-01-15"):
        signer.verify(token, ["t1"], Action.ACCEPT, now=NOW + 3601)


def test_a_token_signed_with_another_key_is_refused(signer: LinkSigner) -> None:
    other = LinkSigner("another-secret", "https://wf.example.com", ttl=3600)
    token = other.token(["t1"], Action.ACCEPT, "a@x", now=NOW)
    with pytest.raises(TokenError, match="altered"):
        signer.verify(token, ["t1"], Action.ACCEPT, now=NOW)


def test_an_altered_token_is_refused(signer: LinkSigner) -> None:
    token = signer.token(["t1"], Action.ACCEPT, "a@x", now=NOW)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(TokenError, match="altered"):
        signer.verify(tampered, ["t1"], Action.ACCEPT, now=NOW)


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token_is_refused(signer: LinkSigner, token: str | None) -> None:
    with pytest.raises(TokenError, match="no token"):
        signer.verify(token, ["t1"], Action.ACCEPT, now=NOW)


def test_task_url_carries_the_task_and_a_token_that_verifies(signer: LinkSigner) -> None:
    url = urlsplit(signer.task_url("t1", Action.DECLINE, "a@x"))
    assert (url.scheme, url.netloc, url.path) == ("https", "wf.example.com", "/decline")
    query = parse_qs(url.query)
    assert query["task"] == ["t1"]
    signer.verify(query["token"][0], ["t1"], Action.DECLINE)


def test_multiple_url_names_the_decline_action_cancel(signer: LinkSigner) -> None:
    url = urlsplit(signer.multiple_url(["t1", "t2"], Action.DECLINE, "a@x"))
    query = parse_qs(url.query)
    assert url.path == "/multiple"
    assert query["action"] == ["cancel"]
    assert query["tasks"] == ["t1,t2"]
    signer.verify(query["token"][0], parse_task_list(query["tasks"][0]), Action.DECLINE)


def test_repr_never_shows_the_secret(signer: LinkSigner) -> None:
    assert "a-test-secret" not in repr(signer)


def test_parse_task_list_drops_blanks_and_repeats() -> None:
    assert parse_task_list(" a, b,,a ,c") == ("a", "b", "c")


@pytest.mark.parametrize("expiry", ["tomorrow", "1900000000", None, 10**20, True, -5])
def test_a_signed_token_with_an_unreadable_expiry_is_refused(signer: LinkSigner, expiry: object) -> None:
    from hashlib import sha256

    from itsdangerous import URLSafeSerializer

    forged = URLSafeSerializer("a-test-secret", salt="abiquo-workflow/action-link/v2").dumps(
        {"h": sha256(b'["t1"]').hexdigest()[:32], "a": "accept", "p": "a@x", "e": expiry}
    )
    with pytest.raises(TokenError, match="expiry cannot be read"):
        signer.verify(forged, ["t1"], Action.ACCEPT, now=NOW)


def test_a_token_for_ids_holding_a_comma_does_not_cover_the_ids_split_at_it(signer: LinkSigner) -> None:
    # The attack: a callback with the ids "a" and "b,zzzz" got an "accept all" link for "a,b,zzzz",
    # which then also accepted task "b" of another request. The parser now refuses such ids; the
    # token's encoding refuses them too.
    token = signer.token(["a", "b,zzzz"], Action.ACCEPT, "a@x", now=NOW)

    with pytest.raises(TokenError, match="other tasks"):
        signer.verify(token, ["a", "b", "zzzz"], Action.ACCEPT, now=NOW)


def test_a_link_of_an_earlier_release_is_refused_with_a_sentence_saying_so(signer: LinkSigner) -> None:
    from hashlib import sha256

    from itsdangerous import URLSafeSerializer

    old = URLSafeSerializer("a-test-secret", salt="abiquo-workflow/action-link/v1").dumps(
        {"h": sha256(b"t1").hexdigest()[:32], "a": "accept", "p": "a@x", "e": int(NOW) + 60}
    )

    with pytest.raises(TokenError, match="earlier version of abiquo-workflow"):
        signer.verify(old, ["t1"], Action.ACCEPT, now=NOW)


def test_a_notice_token_verifies_for_its_email_and_action(signer: LinkSigner) -> None:
    token = signer.notice_token(42, Action.ACCEPT, "a@x", now=NOW)
    grant = signer.verify_notice(token, 42, Action.ACCEPT, now=NOW + 10)
    assert (grant.notice_id, grant.approver) == (42, "a@x")


def test_a_notice_token_is_worthless_for_another_email(signer: LinkSigner) -> None:
    token = signer.notice_token(42, Action.ACCEPT, "a@x", now=NOW)
    with pytest.raises(TokenError, match="other tasks"):
        signer.verify_notice(token, 43, Action.ACCEPT, now=NOW)


def test_a_notice_token_cannot_stand_for_a_list_of_tasks(signer: LinkSigner) -> None:
    token = signer.notice_token(42, Action.ACCEPT, "a@x", now=NOW)
    with pytest.raises(TokenError, match="other tasks"):
        signer.verify(token, ["42"], Action.ACCEPT, now=NOW)


def test_a_task_token_cannot_stand_for_an_email(signer: LinkSigner) -> None:
    token = signer.token(["42"], Action.ACCEPT, "a@x", now=NOW)
    with pytest.raises(TokenError, match="other tasks"):
        signer.verify_notice(token, 42, Action.ACCEPT, now=NOW)


def test_a_notice_token_expires_and_keeps_to_its_action(signer: LinkSigner) -> None:
    token = signer.notice_token(42, Action.ACCEPT, "a@x", now=NOW)
    with pytest.raises(TokenError, match="expired"):
        signer.verify_notice(token, 42, Action.ACCEPT, now=NOW + 3601)
    with pytest.raises(TokenError, match="not to decline"):
        signer.verify_notice(token, 42, Action.DECLINE, now=NOW)


def test_a_notice_url_is_short_and_names_the_email(signer: LinkSigner) -> None:
    url = urlsplit(signer.notice_url(42, Action.DECLINE, "Alice Smith <alice@example.com>"))
    assert url.path == "/multiple"
    assert {key: value[0] for key, value in parse_qs(url.query).items() if key != "token"} == {
        "action": "cancel",
        "notice": "42",
    }
    assert len(url.query) < 250
