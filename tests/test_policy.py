"""The policy: gated types, the default rule, `[[policy.rules]]` (each condition, order, fallback,
`decide`, who approves under a rule), and the facts triage builds from its snapshot."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from abiquo_workflow.config import PolicySettings, build_settings
from abiquo_workflow.domain import (
    Action,
    Datacenter,
    DecidedBy,
    Disk,
    Enterprise,
    RequestDetails,
    User,
    VirtualDatacenter,
    VirtualMachine,
    VmDetails,
    Volume,
)
from abiquo_workflow.policy import (
    AskApprovers,
    AutoDecision,
    Evaluation,
    RequestFacts,
    Verdict,
    approval_rule,
    evaluate,
    is_gated,
    request_facts,
)

ALICE = User("10", "asmith", "Alice", "Smith", "alice@acme.example", "ENTERPRISE_ADMIN")
BOB = User("11", "bjones", "Bob", "Jones", "bob@acme.example", "ENTERPRISE_ADMIN")
CAROL_NO_EMAIL = User("12", "cnomail", "Carol", "Nomail", None, "ENTERPRISE_ADMIN")
DAN_OTHER_ROLE = User("13", "dcustom", "Dan", "Custom", "dan@acme.example", "VDC_APPROVER")
JOHN = User("20", "jdoe", "John", "Doe", "john@acme.example", "USER")
USERS = [ALICE, BOB, CAROL_NO_EMAIL, DAN_OTHER_ROLE, JOHN]

#: A one-VM deploy by John in Acme (id 2), Barcelona DC (id 1): 2 CPUs, 4 GB RAM, 20 GB disk.
FACTS = RequestFacts(
    task_types=("DEPLOY",),
    vms=1,
    cpu=2,
    ram_mb=4096,
    disk_mb=20480,
    requester=JOHN,
    enterprise_id="2",
    enterprise_name="Acme & Söhne <Ltd>",
    datacenter_id="1",
    datacenter_name="Barcelona DC",
)


def facts(**changes: Any) -> RequestFacts:
    return dataclasses.replace(FACTS, **changes)


def verdict(requester: User | None, users: list[User], settings: PolicySettings) -> Verdict:
    return evaluate(facts(requester=requester), users, settings).verdict


def rules(*given: dict[str, Any], **default: Any) -> PolicySettings:
    return PolicySettings.model_validate({**default, "rules": list(given)})


# --- the default rule (the policy.* keys) ----------------------------------------------------------


def test_task_types_outside_the_list_are_not_gated() -> None:
    settings = PolicySettings(task_types=("DEPLOY",))
    assert is_gated("deploy", settings)
    assert not is_gated("UNDEPLOY", settings)


def test_approvers_are_users_with_the_role_and_an_email() -> None:
    assert verdict(JOHN, USERS, PolicySettings()) == AskApprovers((ALICE, BOB))


def test_the_approver_role_is_configurable() -> None:
    verdict_ = verdict(JOHN, [ALICE, DAN_OTHER_ROLE], PolicySettings(approver_role="VDC_APPROVER"))
    assert verdict_ == AskApprovers((DAN_OTHER_ROLE,))


def test_inactive_users_do_not_approve() -> None:
    inactive = User("14", "gone", "Gone", "Away", "gone@acme.example", "ENTERPRISE_ADMIN", active=False)
    assert verdict(JOHN, [inactive, ALICE], PolicySettings()) == AskApprovers((ALICE,))


def test_an_address_listed_twice_gets_one_email() -> None:
    alias = User("15", "alice2", "Alice", "Again", "ALICE@acme.example", "ENTERPRISE_ADMIN")
    assert verdict(JOHN, [ALICE, alias], PolicySettings()) == AskApprovers((ALICE,))


def test_without_approvers_the_default_is_to_cancel() -> None:
    decided = verdict(JOHN, [CAROL_NO_EMAIL, JOHN], PolicySettings())
    assert isinstance(decided, AutoDecision)
    assert (decided.action, decided.decided_by, decided.rule) == (
        Action.DECLINE,
        DecidedBy.NO_APPROVER,
        "policy.when_no_approver",
    )
    assert decided.reason == "nobody in the enterprise holds the ENTERPRISE_ADMIN role with an email address"


def test_without_approvers_accept_can_be_configured() -> None:
    decided = verdict(JOHN, [], PolicySettings(when_no_approver="accept"))
    assert isinstance(decided, AutoDecision)
    assert decided.action is Action.ACCEPT


def test_a_requester_who_is_an_approver_is_asked_of_the_other_approvers_by_default() -> None:
    asked = verdict(ALICE, [ALICE, BOB], PolicySettings())
    assert isinstance(asked, AskApprovers)
    assert asked.approvers == (BOB,)  # separation of duties: nobody approves their own request


def test_a_requester_who_is_an_approver_can_be_accepted_at_once() -> None:
    decided = verdict(ALICE, [ALICE, BOB], PolicySettings(when_requester_is_approver="accept"))
    assert isinstance(decided, AutoDecision)
    assert (decided.action, decided.rule) == (Action.ACCEPT, "policy.when_requester_is_approver")


def test_a_requester_who_is_an_approver_can_be_cancelled() -> None:
    decided = verdict(ALICE, [ALICE, BOB], PolicySettings(when_requester_is_approver="cancel"))
    assert isinstance(decided, AutoDecision)
    assert decided.action is Action.DECLINE


def test_asking_when_the_requester_is_the_only_approver_falls_to_no_approver() -> None:
    decided = verdict(ALICE, [ALICE], PolicySettings(when_requester_is_approver="ask"))
    assert isinstance(decided, AutoDecision)
    assert decided.decided_by is DecidedBy.NO_APPROVER


def test_a_quorum_the_approvers_can_reach_asks_them_all() -> None:
    assert verdict(JOHN, [ALICE, BOB], PolicySettings(approvals_needed=2)) == AskApprovers((ALICE, BOB))


def test_a_quorum_fewer_approvers_than_needed_could_reach_falls_to_no_approver_saying_why() -> None:
    """Alice asks: Bob alone is left, and two approvals are needed."""
    decided = verdict(ALICE, [ALICE, BOB], PolicySettings(approvals_needed=2, when_no_approver="accept"))
    assert isinstance(decided, AutoDecision)
    assert (decided.action, decided.decided_by, decided.rule) == (
        Action.ACCEPT,
        DecidedBy.NO_APPROVER,
        "policy.when_no_approver",
    )
    assert decided.reason == "only 1 approver(s) can be asked, and 2 approvals are needed"


def test_role_names_compare_without_case() -> None:
    assert verdict(JOHN, [ALICE], PolicySettings(approver_role="enterprise_admin")) == AskApprovers((ALICE,))


def test_without_rules_the_default_rule_applies_and_says_so() -> None:
    evaluation = evaluate(FACTS, USERS, PolicySettings())
    assert (evaluation.rule, evaluation.skipped, evaluation.label) == (None, (), "the default rule")
    assert evaluation.approval is not None and evaluation.approval.roles == ("ENTERPRISE_ADMIN",)


# --- each condition: matching, and the sentence when it does not -------------------------------------

#: (rule conditions, facts that match, facts that do not, the sentence for the latter).
CONDITIONS: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]] = [
    (
        {"enterprise": "acme & söhne <ltd>"},
        {},
        {"enterprise_id": "3", "enterprise_name": "Globex"},
        'enterprise "Globex" (id 3) is not in enterprise ["acme & söhne <ltd>"]',
    ),
    ({"enterprise": [7, 2]}, {}, {"enterprise_id": "3"}, 'is not in enterprise ["7", "2"]'),
    (
        {"enterprise": "Acme"},
        {"enterprise_name": "ACME"},
        {"enterprise_id": None, "enterprise_name": None},
        'the enterprise is unknown, so it is not in enterprise ["Acme"]',
    ),
    (
        {"datacenter": "Barcelona DC"},
        {},
        {"datacenter_id": "2", "datacenter_name": "Zürich DC"},
        'datacenter "Zürich DC" (id 2) is not in datacenter ["Barcelona DC"]',
    ),
    ({"datacenter": 1}, {}, {"datacenter_id": "2"}, 'is not in datacenter ["1"]'),
    (
        {"task_types": ["deploy", "reconfigure"]},
        {"task_types": ("RECONFIGURE",)},
        {"task_types": ("DEPLOY", "UNDEPLOY")},
        'UNDEPLOY is not in task_types ["DEPLOY", "RECONFIGURE"]',
    ),
    (
        {"requester_role": ["enterprise_admin", "USER"]},
        {},
        {"requester": DAN_OTHER_ROLE},
        'the requester\'s role VDC_APPROVER is not in requester_role ["enterprise_admin", "USER"]',
    ),
    (
        {"requester_role": "USER"},
        {},
        {"requester": None},
        'the requester\'s role is unknown, so it is not in requester_role ["USER"]',
    ),
    ({"vms": 1}, {}, {"vms": 3}, "3 VMs is not vms 1"),
    ({"min_vms": 2}, {"vms": 2}, {"vms": 1}, "1 VM is fewer than min_vms 2"),
    ({"max_vms": 3}, {"vms": 3}, {"vms": 5}, "5 VMs is more than max_vms 3"),
    ({"max_cpu": 4}, {"cpu": 4}, {"cpu": 8}, "8 CPUs is more than max_cpu 4"),
    (
        {"max_ram": "4GB"},
        {"ram_mb": 4096},
        {"ram_mb": 14336},
        "14,336 MB of RAM is more than max_ram 4,096 MB",
    ),
    ({"max_disk": 40960}, {"disk_mb": 40960}, {"disk_mb": 61440}, "61,440 MB of disk is more than max_disk"),
    (
        {"max_ram": 8192},
        {},
        {"ram_mb": None},
        "the size of a VM is unknown (Abiquo could not say), so max_ram cannot hold",
    ),
]


@pytest.mark.parametrize(("condition", "matching", "other", "why"), CONDITIONS)
def test_each_condition_matches_or_says_why_not(
    condition: dict[str, Any], matching: dict[str, Any], other: dict[str, Any], why: str
) -> None:
    settings = rules({"name": "only", "decide": "accept", **condition})

    assert evaluate(facts(**matching), USERS, settings).rule == "only"
    missed = evaluate(facts(**other), USERS, settings)
    assert missed.rule is None
    [sentence] = missed.skipped
    assert sentence.startswith("rule 'only': ") and why in sentence


def test_every_condition_given_must_hold() -> None:
    settings = rules({"name": "small acme", "enterprise": 2, "max_vms": 2, "decide": "accept"})

    assert evaluate(facts(vms=2), USERS, settings).rule == "small acme"
    assert evaluate(facts(vms=3), USERS, settings).skipped == (
        "rule 'small acme': 3 VMs is more than max_vms 2",
    )
    assert evaluate(facts(enterprise_id="3", enterprise_name="Globex"), USERS, settings).rule is None


def test_a_rule_without_conditions_matches_every_request() -> None:
    settings = rules({"name": "everything", "decide": "cancel"})
    assert evaluate(
        facts(requester=None, enterprise_id=None, enterprise_name=None, cpu=None), [], settings
    ).rule == ("everything")


# --- order, fallback, decide --------------------------------------------------------------------------


def test_the_first_rule_that_matches_wins_and_each_earlier_rule_says_why_not() -> None:
    settings = rules(
        {"name": "tiny", "max_cpu": 1, "decide": "accept"},
        {"name": "globex", "enterprise": "Globex", "decide": "accept"},
        {"name": "acme", "enterprise": "2", "approver_roles": ["VDC_APPROVER"]},
        {"name": "also acme", "enterprise": "2", "decide": "cancel"},
    )

    evaluation = evaluate(FACTS, USERS, settings)

    assert evaluation.rule == "acme" and evaluation.label == "rule 'acme'"
    assert evaluation.skipped == (
        "rule 'tiny': 2 CPUs is more than max_cpu 1",
        'rule \'globex\': enterprise "Acme & Söhne <Ltd>" (id 2) is not in enterprise ["Globex"]',
    )
    assert evaluation.verdict == AskApprovers((DAN_OTHER_ROLE,))


def test_when_no_rule_matches_the_default_rule_applies() -> None:
    settings = rules({"name": "globex", "enterprise": "Globex", "decide": "accept"})

    evaluation = evaluate(FACTS, USERS, settings)

    assert evaluation.rule is None and len(evaluation.skipped) == 1
    assert evaluation.verdict == AskApprovers((ALICE, BOB))


@pytest.mark.parametrize(("word", "action"), [("accept", Action.ACCEPT), ("cancel", Action.DECLINE)])
def test_a_decide_rule_decides_by_policy_naming_the_rule(word: str, action: Action) -> None:
    evaluation = evaluate(FACTS, USERS, rules({"name": "small", "max_vms": 1, "decide": word}))

    assert evaluation.verdict == AutoDecision(
        action, DecidedBy.POLICY, "policy: small", "the request matches policy rule 'small'"
    )
    assert evaluation.approval is None


# --- who approves under a rule -------------------------------------------------------------------------


def test_a_rule_without_approval_keys_takes_the_default_rules() -> None:
    settings = rules(
        {"name": "acme", "enterprise": 2}, approver_role="VDC_APPROVER", when_no_approver="accept"
    )

    evaluation = evaluate(FACTS, USERS, settings)

    assert evaluation.verdict == AskApprovers((DAN_OTHER_ROLE,))
    assert evaluation.approval is not None
    assert (evaluation.approval.when_no_approver, evaluation.approval.when_requester_is_approver) == (
        "accept",
        "ask",
    )


def test_a_rule_asks_every_role_it_names() -> None:
    settings = rules({"name": "acme", "approver_roles": ["enterprise_admin", "VDC_APPROVER"]})
    assert evaluate(FACTS, USERS, settings).verdict == AskApprovers((ALICE, BOB, DAN_OTHER_ROLE))


def test_explicit_addresses_are_asked_besides_the_role_each_once_and_never_the_requester() -> None:
    settings = rules(
        {
            "name": "acme",
            "approvers": ["Carla Finance <CFO@finance.example>", "bob@ACME.example", "john@acme.example"],
        }
    )

    asked = evaluate(FACTS, USERS, settings).verdict

    assert isinstance(asked, AskApprovers)
    assert [user.email for user in asked.approvers] == [
        "alice@acme.example",
        "bob@acme.example",
        "CFO@finance.example",
    ]
    carla = asked.approvers[2]
    assert (carla.id, carla.name, carla.nick) == ("", "Carla Finance", "CFO")


def test_an_explicit_address_of_an_abiquo_user_is_shown_with_their_abiquo_name() -> None:
    settings = rules({"name": "dan", "approver_roles": [], "approvers": "dan@acme.example"})
    assert evaluate(FACTS, USERS, settings).verdict == AskApprovers((DAN_OTHER_ROLE,))


def test_a_rule_of_explicit_addresses_only_asks_those() -> None:
    settings = rules({"name": "cfo", "approver_roles": [], "approvers": ["cfo@finance.example"]})

    asked = evaluate(FACTS, USERS, settings).verdict

    assert isinstance(asked, AskApprovers) and [u.email for u in asked.approvers] == ["cfo@finance.example"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("accept", Action.ACCEPT), ("cancel", Action.DECLINE), ("ask", None)],
)
def test_each_when_requester_is_approver_mode_in_a_rule(mode: str, expected: Action | None) -> None:
    settings = rules(
        {"name": "prod", "enterprise": 2, "when_requester_is_approver": mode},
        when_requester_is_approver="accept" if mode != "accept" else "cancel",  # the rule's own wins
    )

    result = evaluate(facts(requester=ALICE), USERS, settings).verdict

    if expected is None:
        assert result == AskApprovers((BOB,))
    else:
        assert result == AutoDecision(
            expected,
            DecidedBy.POLICY,
            "policy: prod",
            "the requester holds the ENTERPRISE_ADMIN role (policy rule 'prod')",
        )


def test_a_requester_the_rule_names_is_a_requester_who_approves() -> None:
    settings = rules(
        {"name": "prod", "approvers": ["john@acme.example"], "when_requester_is_approver": "cancel"}
    )

    decided = evaluate(FACTS, USERS, settings).verdict

    assert isinstance(decided, AutoDecision) and decided.action is Action.DECLINE
    assert decided.reason == "the requester is one of the approvers the rule names (policy rule 'prod')"


def test_when_no_approver_in_a_rule() -> None:
    settings = rules({"name": "vdc", "approver_roles": ["NOBODY_HAS_IT"], "when_no_approver": "accept"})

    decided = evaluate(FACTS, USERS, settings).verdict

    assert decided == AutoDecision(
        Action.ACCEPT,
        DecidedBy.NO_APPROVER,
        "policy: vdc",
        "nobody in the enterprise holds the NOBODY_HAS_IT role with an email address (policy rule 'vdc')",
    )


def test_when_the_requester_is_the_only_address_a_rule_names_nobody_is_asked() -> None:
    settings = rules({"name": "self", "approver_roles": [], "approvers": ["john@acme.example"]})

    decided = evaluate(FACTS, USERS, settings).verdict

    assert isinstance(decided, AutoDecision) and decided.decided_by is DecidedBy.NO_APPROVER
    assert decided.reason == "the rule names no approver but the requester (policy rule 'self')"


def test_the_approval_rule_of_a_stored_request_is_looked_up_by_name() -> None:
    settings = rules(
        {"name": "cfo", "enterprise": 2, "approver_roles": ["VDC_APPROVER"], "approvers": ["cfo@x.example"]},
        {"name": "small", "decide": "accept"},
    )

    cfo = approval_rule(settings, "cfo")
    assert (cfo.name, cfo.roles, cfo.names("CFO <CFO@X.example>"), cfo.names("bob@acme.example")) == (
        "cfo",
        ("VDC_APPROVER",),
        True,
        False,
    )
    # The default rule: for requests of the default rule, of a rule gone since, or of a decide rule.
    for name in (None, "renamed", "small"):
        fallback = approval_rule(settings, name)
        assert (fallback.name, fallback.roles, fallback.named) == (None, ("ENTERPRISE_ADMIN",), ())


def test_an_evaluation_is_plain_data() -> None:
    evaluation = evaluate(FACTS, [], PolicySettings())
    assert isinstance(evaluation, Evaluation)
    with pytest.raises(dataclasses.FrozenInstanceError):
        evaluation.rule = "x"  # type: ignore[misc]


# --- the facts, from triage's snapshot ---------------------------------------------------------------


def vm(task_id: str, task_type: str, machine: VirtualMachine | None) -> VmDetails:
    return VmDetails(task_id, task_type, machine, None if machine else "not found")


def test_the_facts_total_the_gated_vms_with_their_disks_and_volumes() -> None:
    web = VirtualMachine("1", "web", cpu=2, ram_mb=4096, disks=(Disk("d1", 0, 20480), Disk("d2", 1, 10240)))
    db = VirtualMachine(
        "2", "db", cpu=4, ram_mb=8192, disks=(Disk("d3", 0, 20480),), volumes=(Volume("v", "data", 1024),)
    )
    old = VirtualMachine("3", "old", cpu=1, ram_mb=1024, hd_in_bytes=5 * 1024 * 1024 * 1024)  # Abiquo 2.x
    details = RequestDetails(
        requester=JOHN,
        enterprise=Enterprise("2", "Acme"),
        vdc=VirtualDatacenter("1", "Production", datacenter_name="Barcelona DC"),
        datacenter=Datacenter("1", "Barcelona DC"),
        vapp=None,
        vms=(vm("t1", "DEPLOY", web), vm("t2", "deploy", db), vm("t3", "UNDEPLOY", old)),
    )

    assert request_facts(details, {"t1", "t2"}) == RequestFacts(
        task_types=("DEPLOY",),
        vms=2,
        cpu=6,
        ram_mb=12288,
        disk_mb=20480 + 10240 + 20480 + 1024,
        requester=JOHN,
        enterprise_id="2",
        enterprise_name="Acme",
        datacenter_id="1",
        datacenter_name="Barcelona DC",
    )
    everything = request_facts(details)
    assert (everything.task_types, everything.vms, everything.disk_mb) == (("DEPLOY", "UNDEPLOY"), 3, 57344)


def test_a_vm_abiquo_could_not_read_leaves_the_totals_unknown() -> None:
    web = VirtualMachine("1", "web", cpu=2, ram_mb=4096)
    details = RequestDetails(
        requester=None,
        enterprise=None,
        vdc=VirtualDatacenter("1", "Production", datacenter_name="Zürich DC"),
        datacenter=None,
        vapp=None,
        vms=(vm("t1", "DEPLOY", web), vm("t2", "DEPLOY", None)),
    )

    facts_ = request_facts(details)

    assert (facts_.vms, facts_.cpu, facts_.ram_mb, facts_.disk_mb) == (2, None, None, None)
    assert (facts_.enterprise_id, facts_.enterprise_name) == (None, None)
    assert (facts_.datacenter_id, facts_.datacenter_name) == (None, "Zürich DC")
    assert evaluate(facts_, [], rules({"name": "small", "max_cpu": 8, "decide": "accept"})).rule is None


def test_the_enterprise_falls_back_to_what_the_requester_names() -> None:
    requester = dataclasses.replace(JOHN, enterprise_id="2", enterprise_name="Acme")
    details = RequestDetails(requester=requester, enterprise=None, vdc=None, datacenter=None, vapp=None)
    assert (request_facts(details).enterprise_id, request_facts(details).enterprise_name) == ("2", "Acme")


# --- the README's worked example does what the README says ---------------------------------------------


def readme_example() -> PolicySettings:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    after = readme.split("**A worked example.**", 1)[1]
    block = after.split("```toml\n", 1)[1].split("```", 1)[0]
    return build_settings(tomllib.loads(block), environ={}).policy


def test_the_worked_example_of_the_readme() -> None:
    policy = readme_example()
    acme = [*USERS, User("55", "zzimmer", "Zoë", "Zimmermann", "zoe@acme.example", "ENTERPRISE_ADMIN")]
    two = facts(enterprise_name="Acme & Söhne <Ltd>", vms=2, cpu=4, ram_mb=8192, disk_mb=40960)
    five = facts(enterprise_name="Acme & Söhne <Ltd>", vms=5, cpu=10, ram_mb=20480, disk_mb=102400)

    assert evaluate(two, acme, policy).verdict.rule == "policy: small"  # type: ignore[union-attr]
    production = evaluate(five, acme, policy)
    assert production.skipped == ("rule 'small': 5 VMs is more than max_vms 2",)
    asked = production.verdict
    assert isinstance(asked, AskApprovers)
    assert [u.email for u in asked.approvers] == [
        "alice@acme.example",
        "bob@acme.example",
        "zoe@acme.example",
        "carla@finance.example",
    ]
    own = evaluate(dataclasses.replace(five, requester=ALICE), acme, policy).verdict
    assert isinstance(own, AutoDecision) and own.action is Action.DECLINE
    # Elsewhere the default rule asks the other approvers of an approver's own request.
    elsewhere = evaluate(
        dataclasses.replace(five, enterprise_name="Globex", enterprise_id="3", requester=ALICE), acme, policy
    )
    assert elsewhere.rule is None and elsewhere.verdict == AskApprovers((BOB, acme[-1]))
