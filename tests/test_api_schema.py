"""schemathesis against the JSON API's own OpenAPI document, on a real server (uvicorn in a thread)
with the simulator as Abiquo and held requests in the store: every operation, inputs generated from
the document (valid ones and invalid ones), and every check schemathesis makes (no 500s; statuses,
content types and bodies as documented; 401 without credentials…)."""

from __future__ import annotations

import asyncio
import itertools
import os

import httpx2
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection

from abiquo_workflow.access import token_digest
from tests.conftest import CLIENT_TLS, FAST, ConnectorFactory

TOKEN = "awf_schemathesis-decide-token"
API_TOKENS = {"tokens": [{"name": "schemathesis", "scope": "decide", "sha256": token_digest(TOKEN)}]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Examples generated per operation and mode: 9 operations, valid and invalid inputs, 360 requests in all
#: (40 each took 42 s of the suite; 20 is half of that, for the same operations and checks). In
#: `make test-fast` (AWF_TEST_FAST=1), as for the other properties, a tenth: every operation and check
#: still runs, on two examples each.
EXAMPLES = 2 if FAST else 20
#: The examples are the same on every run (Hypothesis derives them from the test), so a red run means
#: the code changed, not the dice: random ones found a real looseness and a false alarm in CI, each
#: once in several runs. `AWF_SCHEMATHESIS_EXPLORE=1` draws new ones, to look for more.
EXPLORE = os.environ.get("AWF_SCHEMATHESIS_EXPLORE") == "1"


def handed_out_cursor(url: str, path: str) -> str:
    """The `next_cursor` of a one-row page of the list at `path`."""
    cursor = httpx2.get(f"{url}/api/v1{path}?limit=1", headers=AUTH, verify=CLIENT_TLS).json()["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


def unsent_negatives(case: schemathesis.Case) -> list[schemathesis.CheckFunction]:
    """The checks that would judge what never reached the server: the API declares no header
    parameters, so a case made invalid in its headers is invalid in `Authorization` only, which the
    test replaces with its own token. schemathesis still judges the header it generated and calls the
    answer "invalid data accepted" (CI saw it, with a query value that was valid once sent); every
    other check still runs, and refused credentials are tested in tests/test_api.py."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        return [negative_data_rejection]
    return []


def test_the_api_keeps_to_its_openapi_document(connector_factory: ConnectorFactory) -> None:
    # schemathesis sends wrong Basic credentials many times over to see them refused with 401: the
    # brake on guessing passwords (429 after a few, tests/test_api.py) is set out of its way.
    with connector_factory(api=API_TOKENS, dashboard={"max_failed_sign_ins": 1_000_000}) as connector:
        asyncio.run(connector.request(action="deploy", vm=1))
        asyncio.run(connector.request(action="deploy", vm=2))
        cursors = {path: handed_out_cursor(connector.url, path) for path in ("/requests", "/tasks")}
        schema = schemathesis.openapi.from_url(f"{connector.url}/api/v1/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 9
        declared = (
            httpx2.get(f"{connector.url}/api/v1/openapi.json", verify=CLIENT_TLS).json()["paths"].values()
        )
        locations = {p["in"] for path in declared for op in path.values() for p in op.get("parameters", [])}
        assert "header" not in locations, "unsent_negatives assumes no header parameters"

        for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                derandomize=not EXPLORE,
            )
            def keeps_to_it(case: schemathesis.Case) -> None:
                positive = (
                    case.meta is None or case.meta.generation.mode is schemathesis.GenerationMode.POSITIVE
                )
                if positive and case.query and case.query.get("cursor"):
                    # Cursors are opaque: a client passes one the API handed out (tests/test_api.py
                    # checks that any other is refused with 422).
                    case.query["cursor"] = cursors[case.operation.path]
                case.call_and_validate(headers=AUTH, excluded_checks=unsent_negatives(case))

            keeps_to_it()
