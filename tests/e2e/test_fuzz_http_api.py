"""schemathesis against a running system with tokens: requests generated from the contract
the gateway serves at /openapi.json, as a reader, a writer and an admin. Every response must be
no 5xx and as documented (status code, content type, headers, schema), schema-violating
requests must be refused, and a refused request to an operation that changes data must
have changed nothing in Postgres or Redis.

FUZZ_EXAMPLES sets the generated requests per operation and role (`make fuzz` sets many).
"""

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from gateway import openapi
from testkit.data_state import DataState
from testkit.stack import own_stack, tokens_env

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
TOKENS = {"reader": "fuzz-reader-token", "writer": "fuzz-writer-token", "admin": "fuzz-admin-token"}
# Each copies the whole album table: excluded from the admin's run (the others get 403).
GROWS_TABLES = {("POST", "/tasks/duplicate"), ("GET", "/duplicate_database")}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, unsupported_method, allow_header_conformance]
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                         database=None)


@pytest.fixture(scope="module")
def fuzzed_stack(tmp_path_factory):
    """A system of its own: the fuzzer's writes must not reach the other tests' rows."""
    with own_stack("fuzz", tmp_path_factory.mktemp("fuzz"), {"API_TOKENS": tokens_env(TOKENS)}) as stack:
        yield stack


@pytest.fixture(scope="module")
def data_state(fuzzed_stack):
    return DataState(fuzzed_stack, admin_token=TOKENS["admin"])


# The contract as this gateway serves it (test_the_gateway_serves_the_fuzzed_contract);
# loaded here, at collection, so that each operation is a test of its own.
CONTRACT = openapi.document(legacy_routes=True, anonymous_role="none")
schema = schemathesis.openapi.from_dict(CONTRACT)
# Every request carries the role's token (test_auth and test_access cover the others), and
# no parameter the contract does not name: the gateway ignores those, as HTTP APIs may.
schema.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)


def test_the_gateway_serves_the_fuzzed_contract(fuzzed_stack):
    response = requests.get(f"{fuzzed_stack.gateway_url}/openapi.json", timeout=30)
    assert response.status_code == 200 and response.json() == CONTRACT


def changes_data(case) -> bool:
    return case.operation.definition.raw["x-required-role"] in ("writer", "admin")


def fuzz(case, role, fuzzed_stack, data_state):
    headers = {"Authorization": f"Bearer {TOKENS[role]}"}
    checks = list(CHECKS)
    if changes_data(case):
        checks.append(data_state.refusal_changed_nothing(data_state.settle_and_snapshot()))
    case.call_and_validate(base_url=fuzzed_stack.gateway_url, headers=headers, checks=checks, timeout=60)


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_as_reader(case, fuzzed_stack, data_state):
    fuzz(case, "reader", fuzzed_stack, data_state)


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_as_writer(case, fuzzed_stack, data_state):
    fuzz(case, "writer", fuzzed_stack, data_state)


def admin_work_that_keeps_table_sizes(ctx) -> bool:
    operation = ctx.operation
    return operation.definition.raw["x-required-role"] == "admin" \
        and (operation.method.upper(), operation.path) not in GROWS_TABLES


@schema.include(admin_work_that_keeps_table_sizes).parametrize()
@FUZZ_SETTINGS
def test_fuzz_as_admin(case, fuzzed_stack, data_state):
    fuzz(case, "admin", fuzzed_stack, data_state)
