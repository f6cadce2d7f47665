"""An entity registered through ENTITY_MODULES alone, on a table of this test's own
database, with the grants of persistence-svc's least-privileged role (as which it connects
here): the gateway serves its routes and their part of the contract, its writes go through
cache-svc and the workers to Postgres, and InspectRow shows them. No code of any service
names it; a process that did not register it would refuse it (and the writes would never
reach Postgres)."""

from urllib.parse import urlsplit

import psycopg2
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from testkit.api import Api
from testkit.near_cache import eventually
from testkit.stack import own_stack

pytestmark = pytest.mark.e2e

ENTITY_MODULE = "tests.e2e.label_entity"
SERVICE_ROLE = "chinook_persistence"
# What sql/ gives a write-back table: its wb_version column, and to persistence-svc's role
# reading it and updating the columns a write may change and wb_version.
TABLE = f"""
CREATE TABLE record_label (
    label_id int PRIMARY KEY,
    name varchar(80) NOT NULL,
    founded int,
    wb_version bigint NOT NULL DEFAULT 0
);
INSERT INTO record_label (label_id, name, founded) VALUES (1, 'Warner Bros.', 1958), (2, 'Sub Pop', NULL),
    (3, 'Rough Trade', 1978);
GRANT SELECT ON record_label TO {SERVICE_ROLE};
GRANT UPDATE (name, founded, wb_version) ON record_label TO {SERVICE_ROLE};
"""
FLUSH_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    def prepare(stack):
        with psycopg2.connect(stack.isolation.database_url) as conn, conn.cursor() as cur:
            cur.execute(TABLE)
        parts = urlsplit(stack.isolation.database_url)
        stack.configure("persistence-svc", DATABASE_URL=parts._replace(
            netloc=f"{SERVICE_ROLE}@{parts.hostname}:{parts.port or 5432}").geturl())

    with own_stack("entity", tmp_path_factory.mktemp("entity"), {"ENTITY_MODULES": ENTITY_MODULE},
                   prepare=prepare) as stack:
        yield Api(stack)


def in_postgres(api, label_id) -> dict:
    [(name, founded, wb_version)] = api.sql(
        "SELECT name, founded, wb_version FROM record_label WHERE label_id = %s", (label_id,))
    return {"label_id": label_id, "name": name, "founded": founded, "wb_version": wb_version}


def until_in_postgres(api, label_id, expected: dict) -> dict:
    """The row once Postgres holds `expected` (a flush runs on the flusher's own tick)."""
    eventually(lambda: in_postgres(api, label_id).items() >= expected.items(),
               f"label {label_id} never reached Postgres as {expected}: {in_postgres(api, label_id)}",
               FLUSH_TIMEOUT_S)
    return in_postgres(api, label_id)


def test_its_rows_are_read_through_the_cache(api):
    first = api.get("/labels/1")
    assert first.status_code == 200, first.text
    assert first.json() == {"label_id": 1, "name": "Warner Bros.", "founded": 1958}
    assert first.headers["X-Cache-Tier"] == "postgres" and first.headers["X-Write-Back"] == "clean"
    assert api.get("/labels/1").headers["X-Cache"] == "HIT"
    assert api.get("/labels/99").status_code == 404


def test_the_contract_lists_its_operations_and_their_schemas(api):
    document = api.get("/openapi.json").json()
    validate(document, cls=OpenAPIV31SpecValidator)
    assert set(document["paths"]["/labels/{label_id}"]) >= {"get", "patch"}
    assert document["paths"]["/labels/{label_id}"]["patch"]["x-required-role"] == "writer"
    assert set(document["paths"]["/labels/bulk"]) == {"post"}
    schemas = document["components"]["schemas"]
    assert schemas["LabelPatch"]["properties"]["name"]["maxLength"] == 80
    assert schemas["LabelPatch"]["properties"]["founded"]["type"] == ["integer", "null"]
    assert schemas["LabelBulkItem"]["required"] == ["label_id"]
    assert "label" in schemas["EntityName"]["enum"]


@pytest.mark.parametrize("body, message", [
    ({"name": "x" * 81}, "name: must be 1-80 characters"),
    ({"founded": "1958"}, "founded: must be an integer"),
    ({"title": "Not a label's"}, "title: unknown field for label"),
])
def test_its_columns_are_checked_as_registered(api, body, message):
    response = api.patch("/labels/3", json=body)
    assert response.status_code == 400 and message in response.json()["error"]["message"], response.text


def test_a_patch_is_flushed_to_postgres_and_inspected(api):
    response = api.patch("/labels/2", json={"name": "Sub Pop Records", "founded": 1988})
    assert response.status_code == 202, response.text
    version = response.json()["version"]
    assert response.json() == {"label_id": 2, "version": version, "write_back": "pending"}
    assert response.headers["X-Consistency-Token"] == f"v1.{version}"

    stored = until_in_postgres(api, 2, {"name": "Sub Pop Records", "founded": 1988})
    assert stored["wb_version"] == version
    inspection = api.get("/write-back/rows/label/2")
    assert inspection.status_code == 200, inspection.text
    assert inspection.json()["postgres"] == {
        "present": True, "value": {"label_id": 2, "name": "Sub Pop Records", "founded": 1988}, "wb_version": version}
    assert inspection.json()["cache"]["value"] == {"label_id": 2, "name": "Sub Pop Records", "founded": 1988}


def test_a_bulk_is_flushed_to_postgres(api):
    response = api.post("/labels/bulk", json={"updates": [{"label_id": 1, "founded": None},
                                                           {"label_id": 3, "name": "Rough Trade Records"}]})
    assert response.status_code == 202 and response.json() == {"accepted": 2}, response.text
    assert until_in_postgres(api, 1, {"name": "Warner Bros.", "founded": None})
    assert until_in_postgres(api, 3, {"name": "Rough Trade Records", "founded": 1978})
    unknown = api.post("/labels/bulk", json={"updates": [{"label_id": 99, "name": "Nobody's"}]})
    assert unknown.status_code == 400, unknown.text
    assert unknown.json()["error"]["message"] == "updates[0].label_id: label 99 does not exist"
