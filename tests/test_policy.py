"""The policy rules, in the order docs/design.md gives them."""

from __future__ import annotations

from abiquo_workflow.config import PolicySettings
from abiquo_workflow.domain import Action, DecidedBy, User
from abiquo_workflow.policy import AskApprovers, AutoDecision, evaluate, is_gated

ALICE = User("10", "asmith", "Alice", "Smith", "alice@acme.example", "ENTERPRISE_ADMIN")
BOB = User("11", "bjones", "Bob", "Jones", "bob@acme.example", "ENTERPRISE_ADMIN")
CAROL_NO_EMAIL = User("12", "cnomail", "Carol", "Nomail", None, "ENTERPRISE_ADMIN")
DAN_OTHER_ROLE = User("13", "dcustom", "Dan", "Custom", "dan@acme.example", "VDC_APPROVER")
JOHN = User("20", "jdoe", "John", "Doe", "john@acme.example", "USER")


def test_task_types_outside_the_list_are_not_gated() -> None:
    settings = PolicySettings(task_types=("DEPLOY",))
    assert is_gated("deploy", settings)
    assert not is_gated("UNDEPLOY", settings)


def test_approvers_are_users_with_the_role_and_an_email() -> None:
    verdict = evaluate(JOHN, [ALICE, BOB, CAROL_NO_EMAIL, DAN_OTHER_ROLE, JOHN], PolicySettings())
    assert verdict == AskApprovers((ALICE, BOB))


def test_the_approver_role_is_configurable() -> None:
    verdict = evaluate(JOHN, [ALICE, DAN_OTHER_ROLE], PolicySettings(approver_role="VDC_APPROVER"))
    assert verdict == AskApprovers((DAN_OTHER_ROLE,))


def test_inactive_users_do_not_approve() -> None:
    inactive = User("14", "gone", "Gone", "Away", "gone@acme.example", "ENTERPRISE_ADMIN", active=False)
    assert evaluate(JOHN, [inactive, ALICE], PolicySettings()) == AskApprovers((ALICE,))


def test_an_address_listed_twice_gets_one_email() -> None:
    alias = User("15", "alice2", "Alice", "Again", "ALICE@acme.example", "ENTERPRISE_ADMIN")
    assert evaluate(JOHN, [ALICE, alias], PolicySettings()) == AskApprovers((ALICE,))


def test_without_approvers_the_default_is_to_cancel() -> None:
    verdict = evaluate(JOHN, [CAROL_NO_EMAIL, JOHN], PolicySettings())
    assert isinstance(verdict, AutoDecision)
    assert (verdict.action, verdict.decided_by, verdict.rule) == (
        Action.DECLINE,
        DecidedBy.NO_APPROVER,
        "policy.when_no_approver",
    )


def test_without_approvers_accept_can_be_configured() -> None:
    verdict = evaluate(JOHN, [], PolicySettings(when_no_approver="accept"))
    assert isinstance(verdict, AutoDecision)
    assert verdict.action is Action.ACCEPT


def test_a_requester_who_is_an_approver_is_asked_of_the_other_approvers_by_default() -> None:
    verdict = evaluate(ALICE, [ALICE, BOB], PolicySettings())
    assert isinstance(verdict, AskApprovers)
    assert verdict.approvers == (BOB,)  # separation of duties: nobody approves their own request


def test_a_requester_who_is_an_approver_can_be_accepted_at_once() -> None:
    verdict = evaluate(ALICE, [ALICE, BOB], PolicySettings(when_requester_is_approver="accept"))
    assert isinstance(verdict, AutoDecision)
    assert (verdict.action, verdict.rule) == (Action.ACCEPT, "policy.when_requester_is_approver")


def test_a_requester_who_is_an_approver_can_be_cancelled() -> None:
    verdict = evaluate(ALICE, [ALICE, BOB], PolicySettings(when_requester_is_approver="cancel"))
    assert isinstance(verdict, AutoDecision)
    assert verdict.action is Action.DECLINE


def test_asking_about_an_approvers_own_request_asks_the_others_only() -> None:
    verdict = evaluate(ALICE, [ALICE, BOB], PolicySettings(when_requester_is_approver="ask"))
    assert verdict == AskApprovers((BOB,))


def test_asking_when_the_requester_is_the_only_approver_falls_to_no_approver() -> None:
    verdict = evaluate(ALICE, [ALICE], PolicySettings(when_requester_is_approver="ask"))
    assert isinstance(verdict, AutoDecision)
    assert verdict.decided_by is DecidedBy.NO_APPROVER


def test_role_names_compare_without_case() -> None:
    verdict = evaluate(JOHN, [ALICE], PolicySettings(approver_role="enterprise_admin"))
    assert verdict == AskApprovers((ALICE,))
