import json

import pytest

from chinook.config import ConfigError
from chinook.entities import (
    ENTITIES,
    Column,
    Entity,
    ValidationError,
    get_entity,
    parse_id,
    register,
    register_modules,
)

ALBUM = get_entity("album")


def test_valid_patch_is_converted_to_column_types():
    assert ALBUM.validate_patch({"title": "X", "artist_id": 127.0}) == {"title": "X", "artist_id": 127}


@pytest.mark.parametrize("patch, message", [
    ({}, "at least one of title, artist_id"),
    ({"title": ""}, "title: must be 1-160 characters, got 0"),
    ({"title": "x" * 161}, "title: must be 1-160 characters, got 161"),
    ({"title": 5}, "title: must be a string"),
    ({"title": "a\x00b"}, "NUL"),
    ({"title": "\ud800"}, "not valid Unicode"),
    ({"artist_id": "127"}, "artist_id: must be an integer"),
    ({"artist_id": 1.5}, "artist_id: must be an integer"),
    ({"artist_id": True}, "artist_id: must be an integer"),
    ({"artist_id": float("nan")}, "artist_id: must be an integer"),
    ({"artist_id": float("inf")}, "artist_id: must be an integer"),
    ({"artist_id": 2**31}, "out of range"),
    ({"artist_id": None}, "must not be null"),
    ({"album_id": 3}, "album_id: unknown field for album"),
    ({"title": "x", "genre": "rock"}, "genre: unknown field"),
    ([], "must be a JSON object"),
])
def test_invalid_patches_are_refused_with_the_reason(patch, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        ALBUM.validate_patch(patch)


def test_title_of_exactly_160_characters_is_accepted():
    assert ALBUM.validate_patch({"title": "é" * 160})["title"] == "é" * 160


def test_full_row_needs_every_column():
    with pytest.raises(ValidationError, match="missing artist_id"):
        ALBUM.validate_full_row({"title": "x"}, "rows[0]")
    assert ALBUM.validate_full_row({"title": "x", "artist_id": 1}) == {"title": "x", "artist_id": 1}


def test_nullable_column_takes_null():
    assert get_entity("artist").validate_full_row({"name": None}) == {"name": None}


@pytest.mark.parametrize("raw, expected", [("193", 193), (193, 193), ("2147483647", 2**31 - 1)])
def test_ids_parse(raw, expected):
    assert parse_id(raw) == expected


@pytest.mark.parametrize("raw", ["abc", "-1", "0", "1.5", "१२", "2147483648", "", True, 3.0, None])
def test_bad_ids_are_refused(raw):
    with pytest.raises(ValidationError):
        parse_id(raw)


def test_unknown_entity_names_the_known_ones():
    with pytest.raises(ValidationError, match="known: album, artist"):
        get_entity("track")


def test_references_point_at_registered_entities():
    for entity in ENTITIES.values():
        for column in entity.columns:
            assert column.references is None or column.references in ENTITIES
            assert not column.name.startswith("_"), "columns starting with _ clash with cache metadata"


def test_rows_travel_as_columnar_json_and_back():
    rows = [(1, 7, {"title": "One", "artist_id": 2}), (2, 0, {"title": "Two", "artist_id": None})]
    text = ALBUM.columns_json(rows)
    assert json.loads(text) == {"id": [1, 2], "version": [7, 0], "title": ["One", "Two"], "artist_id": [2, None]}
    assert ALBUM.rows_from_columns_json(text) == rows
    assert ALBUM.rows_from_columns_json(ALBUM.columns_json([])) == []


@pytest.mark.parametrize("text, message", [
    ("[", "not valid JSON"),
    ('{"id": [1], "version": [1], "title": ["x"]}', "expected an object with the arrays id, version, title, artist_id"),
    ('{"id": [1, 2], "version": [1], "title": ["x"], "artist_id": [1]}', "must have the same length"),
])
def test_columnar_json_of_the_wrong_shape_is_refused(text, message):
    with pytest.raises(ValidationError, match=message):
        ALBUM.rows_from_columns_json(text)


@pytest.mark.parametrize("column, value", [
    ("title", ""), ("title", "x" * 161), ("title", "nul \x00 inside"), ("title", "\ud800"), ("title", 5),
    ("title", None), ("artist_id", "5"), ("artist_id", 2**31), ("artist_id", True), ("artist_id", 2.5),
    ("artist_id", None),
])
def test_a_batch_column_refuses_what_a_patch_refuses_naming_the_row(column, value):
    with pytest.raises(ValidationError) as one_by_one:
        ALBUM.validate_patch({column: value})
    columns = ALBUM.columns_from_json(ALBUM.columns_json(
        [(1, 7, {"title": "ok", "artist_id": 1}), (2, 7, {"title": "ok", "artist_id": 1, column: value})]))
    with pytest.raises(ValidationError, match=rf"rows\.{column}\[1\]: ") as batch:
        ALBUM.validate_columns(columns)
    assert str(batch.value).split(": ", 1)[1] == str(one_by_one.value).split(": ", 1)[1]


def test_a_batch_checks_ids_versions_and_that_each_row_writes_a_column():
    rows = [(1, 7, {"title": "whole", "artist_id": 1}), (2, 0, {"artist_id": 3}),
            (3, 2**53 - 2**32, {"title": "partial"})]
    ALBUM.validate_columns(ALBUM.columns_from_json(ALBUM.columns_json(rows)))
    get_entity("artist").validate_columns(get_entity("artist").columns_from_json(
        get_entity("artist").columns_json([(1, 1, {"name": None})])))
    for bad, message in [((0, 1, {"title": "t"}), r"rows\.id\[1\]: 0 is out of range"),
                         (("9", 1, {"title": "t"}), r"rows\.id\[1\]: the id must be an integer"),
                         ((9, -1, {"title": "t"}), r"rows\.version\[1\]: must be an integer in 0"),
                         ((9, 1, {}), r"rows\.unset\[1\]: a row must write at least one column")]:
        with pytest.raises(ValidationError, match=message):
            ALBUM.validate_columns(ALBUM.columns_from_json(ALBUM.columns_json([rows[0], bad])))


LABEL = Entity(name="label", collection="labels", table="record_label", primary_key="label_id",
               columns=(Column("name", "varchar", max_length=80),))


def test_a_registered_entity_is_known_everywhere_the_registry_is_read(registry):
    assert register(LABEL) is LABEL
    assert get_entity("label") is LABEL and list(registry)[-1] == "label"
    register(LABEL)
    assert list(registry).count("label") == 1, "registering the same entity again changes nothing"


@pytest.mark.parametrize("entity, message", [
    (Entity(name="label", collection="labels", table="other", primary_key="label_id"), "registered already"),
    (Entity(name="record", collection="albums", table="record", primary_key="record_id"), "belongs to 'album'"),
    (Entity(name="task", collection="tasks", table="task", primary_key="task_id"), "path of the gateway's own"),
    (Entity(name="Label", collection="labels", table="label", primary_key="label_id"), "lower-case"),
    (Entity(name="tag", collection="tags/all", table="tag", primary_key="tag_id"), "lower-case"),
    (Entity(name="tag", collection="tags", table="tag", primary_key="tag_id", columns=(Column("_v", "int"),)),
     "clash with cache metadata"),
])
def test_an_entity_that_would_clash_is_refused(registry, entity, message):
    register(LABEL)
    with pytest.raises(ValueError, match=message):
        register(entity)


def test_entity_modules_that_cannot_register_stop_the_start(registry):
    with pytest.raises(ConfigError, match="ENTITY_MODULES: no_such_module_of_entities: No module named"):
        register_modules("chinook.entities, no_such_module_of_entities")
    register_modules(" ,")
    assert list(registry) == ["album", "artist"]
