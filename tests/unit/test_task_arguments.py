"""What a worker takes from a task before acting on it."""

import json

import pytest

from chinook.config import MAX_WRITEBACK_BATCH_SIZE
from chinook.entities import MAX_VERSION, get_entity, new_claim_id
from chinook.tracing import LINK_WIDTH, MAX_FLUSH_LINKS
from worker.task_arguments import MalformedTask, check_apply_writes, check_duplicate_rows

CLAIM = new_claim_id()
ALBUM = get_entity("album")
ROW = (7, 1_700_000_000_000_000, {"title": "t", "artist_id": 1})
LINK = "a" * LINK_WIDTH
# What the flusher publishes: entity, rows (columnar JSON), claim, refusals, links, links_dropped.
VALID = ("album", ALBUM.columns_json([ROW]), CLAIM, 0, [LINK], 0)
MAX_ATTEMPTS = 5


def check(**changes):
    arguments = dict(zip(("entity", "rows", "claim", "refusals", "links", "links_dropped"), VALID, strict=False))
    return check_apply_writes(**{**arguments, **changes}, max_attempts=MAX_ATTEMPTS)


def columns(**changes) -> str:
    """The valid task's rows with some arrays replaced."""
    return json.dumps({**json.loads(VALID[1]), **changes})


def test_a_task_as_the_flusher_publishes_it_is_taken_and_its_columns_returned():
    assert check()["id"] == [7]
    partial = (1, 0, {"title": "only the columns a partial row holds"})
    assert len(check(rows=ALBUM.columns_json([partial] * MAX_WRITEBACK_BATCH_SIZE))["id"]) == MAX_WRITEBACK_BATCH_SIZE
    check(entity="artist", rows=get_entity("artist").columns_json([(1, MAX_VERSION, {"name": None})]), links=(),
          refusals=MAX_ATTEMPTS - 1)
    check(rows=ALBUM.columns_json([]))  # writes nothing


@pytest.mark.parametrize("changes, message", [
    ({"entity": "track"}, "entity: must be one of album, artist"),
    ({"entity": ["album"]}, "entity: must be one of"),
    ({"rows": ALBUM.columns_json([ROW] * (MAX_WRITEBACK_BATCH_SIZE + 1))},
     f"rows: must hold at most {MAX_WRITEBACK_BATCH_SIZE} rows, got {MAX_WRITEBACK_BATCH_SIZE + 1}"),
    ({"rows": [list(ROW)]}, "rows: must be the rows as columnar JSON text"),
    ({"rows": "[[7, 1]]"}, "rows: expected an object with the arrays id, version, title, artist_id"),
    ({"rows": columns(version=[1, 2])}, "rows: the arrays id, version, title, artist_id must have the same length"),
    ({"rows": columns(id=["7"])}, r"rows.id\[0\]: the id must be an integer"),
    ({"rows": columns(id=[0])}, r"rows.id\[0\]: 0 is out of range"),
    ({"rows": columns(id=[True])}, r"rows.id\[0\]: the id must be an integer"),
    ({"rows": columns(version=[MAX_VERSION + 1])}, r"rows.version\[0\]: must be an integer in 0..2\^53-2\^32"),
    ({"rows": columns(version=[1.5])}, r"rows.version\[0\]"),
    ({"rows": columns(unset=[["title", "artist_id"]])}, r"rows.unset\[0\]: a row must write at least one column"),
    ({"rows": columns(unset=[["wb_version"]])}, "rows: unset lists unknown columns"),
    ({"claim": None}, "claim: missing, as in a task published before"),
    ({"claim": "guess"}, "claim: must be the claim id of a flush task, 32 hex digits"),
    ({"claim": CLAIM.upper()}, "claim: must be the claim id"),
    ({"refusals": -1}, "refusals: must be an integer in 0..4"),
    ({"refusals": MAX_ATTEMPTS}, "refusals: must be an integer in 0..4"),
    ({"links": [LINK] * (MAX_FLUSH_LINKS + 1)}, f"links: must be a list of at most {MAX_FLUSH_LINKS}"),
    ({"links": "a" * LINK_WIDTH}, "links: must be a list"),
    ({"links": ["z" * LINK_WIDTH]}, f"links: each must be a span context of {LINK_WIDTH} hex digits"),
    ({"links_dropped": -1}, "links_dropped: must be an integer in 0.."),
])
def test_a_malformed_apply_writes_task_is_refused_saying_what_is_wrong(changes, message):
    with pytest.raises(MalformedTask, match=message):
        check(**changes)


def test_a_duplication_takes_a_known_entity_and_a_multiplier_of_2_to_64():
    check_duplicate_rows("album", 2)
    check_duplicate_rows("album", 64)
    for entity, multiplier, message in [("album", 100, "multiplier: must be 2-64, got 100"),
                                        ("album", 1, "multiplier: must be 2-64, got 1"),
                                        ("album", "2", "multiplier: must be an integer"),
                                        ("invoice", 2, "entity: must be one of album, artist")]:
        with pytest.raises(MalformedTask, match=message):
            check_duplicate_rows(entity, multiplier)
