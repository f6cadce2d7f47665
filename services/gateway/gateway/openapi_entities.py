"""The rows' part of the HTTP API's contract, generated from the entity registry: for
each entity its GET, PATCH and bulk paths and the schemas of its row, patch and bulk
item; and the names of the entities where other operations take one."""

import copy

from chinook.entities import INT_MAX, INT_MIN, MAX_BULK_UPDATES, Column, Entity

REF = "#/components/{}/{}"
# The responses every operation on rows may give beside its own.
COMMON_FAILURES = {status: {"$ref": REF.format("responses", name)} for status, name in (
    ("401", "Unauthenticated"), ("503", "Unavailable"), ("504", "DeadlineExceeded"), ("414", "UriTooLong"))}
# ...and those of an operation that changes rows.
CHANGE_FAILURES = {status: {"$ref": REF.format("responses", name)} for status, name in (
    ("403", "PermissionDenied"), ("413", "PayloadTooLarge"), ("415", "UnsupportedMediaType"))}
TOKEN_PARAMETERS = [{"$ref": REF.format("parameters", "ConsistencyToken")},
                    {"$ref": REF.format("parameters", "ConsistencyCookie")}]
TOKEN_HEADERS = {"X-Consistency-Token": {"$ref": REF.format("headers", "ConsistencyToken")},
                 "Set-Cookie": {"$ref": REF.format("headers", "ConsistencyCookie")}}
NO_NUL = "^[^\\u0000]*$"


def camel(name: str) -> str:
    """album -> Album, media_type -> MediaType: the entity's part of schema and operation names."""
    return "".join(part.title() for part in name.replace("-", "_").split("_"))


def article(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def ref(kind: str, name: str) -> dict:
    return {"$ref": REF.format(kind, name)}


def nullable(schema: dict, column: Column) -> dict:
    return {**schema, "type": [schema["type"], "null"]} if column.nullable else schema


def stored_schema(column: Column) -> dict:
    """A column's value as a read shows it."""
    if column.pg_type == "int":
        return nullable({"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX}, column) \
            if column.nullable else ref("schemas", "Int32")
    return nullable({"type": "string"}, column)


def written_schema(column: Column) -> dict:
    """A column's value as a write must give it (Column.validate's rules)."""
    if column.pg_type == "int":
        schema = {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX}
        if column.references:
            schema = {"description": f"The id of {article(column.references.replace('_', ' '))} that exists.",
                      **schema}
    else:
        schema = {"type": "string", "minLength": 1, "maxLength": column.max_length, "pattern": NO_NUL}
    if column.nullable:
        schema = {"description": "null clears it.", **nullable(schema, column)}
    return schema


def schemas(entity: Entity) -> dict:
    name = camel(entity.name)
    written = {column.name: written_schema(column) for column in entity.columns}
    key = {entity.primary_key: ref("schemas", "RowId")}
    return {
        name: {"type": "object", "required": [entity.primary_key, *entity.column_names],
               "additionalProperties": False,
               "properties": {**key, **{column.name: stored_schema(column) for column in entity.columns}}},
        f"{name}Patch": {"description": "At least one column; the others keep their values.", "type": "object",
                         "minProperties": 1, "additionalProperties": False, "properties": written},
        f"{name}BulkItem": {"description": f"{article(entity.name.replace('_', ' ')).capitalize()} that exists, "
                                           "and at least one column to change.",
                            "type": "object", "required": [entity.primary_key], "minProperties": 2,
                            "additionalProperties": False, "properties": {**key, **written}},
    }


def invalid(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref("schemas", "InvalidArgument")}}}


def paths(entity: Entity) -> dict:
    name, words = camel(entity.name), entity.name.replace("_", " ")
    references = sorted({column.references.replace("_", " ") for column in entity.columns if column.references})
    missing = "".join(f", the {reference} does not exist" for reference in references)
    accepted = {"description": "Accepted into the cache; pending until written to Postgres.",
                "headers": TOKEN_HEADERS,
                "content": {"application/json": {"schema": {
                    "type": "object", "required": [entity.primary_key, "version", "write_back"],
                    "additionalProperties": False,
                    "properties": {entity.primary_key: ref("schemas", "RowId"), "version": ref("schemas", "Version"),
                                   "write_back": {"const": "pending"}}}}}}
    read = {
        "operationId": f"get{name}", "tags": ["rows"],
        "summary": f"{article(words).capitalize()}, from the nearest cache tier that holds it",
        "x-required-role": "reader", "security": [{"bearer": []}], "parameters": TOKEN_PARAMETERS,
        "responses": {
            "200": {"description": f"The {words}, with where it came from and its write-back state.",
                    "headers": {"X-Cache": ref("headers", "X-Cache"), "X-Cache-Tier": ref("headers", "X-Cache-Tier"),
                                "X-Write-Back": ref("headers", "X-Write-Back"),
                                "X-Consistency-Token": ref("headers", "ConsistencyTokenIfPresented"),
                                "Set-Cookie": ref("headers", "ConsistencyCookieIfPresented")},
                    "content": {"application/json": {"schema": ref("schemas", name)}}},
            "400": ref("responses", "BadRequest"), "404": ref("responses", "NotFound"), **COMMON_FAILURES},
    }
    update = {
        "operationId": f"update{name}", "tags": ["rows"],
        "summary": f"Changes some columns of {article(words)}; readers see it at once, Postgres after the write-back",
        "x-required-role": "writer", "security": [{"bearer": []}], "parameters": TOKEN_PARAMETERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("schemas", f"{name}Patch")}}},
        "responses": {
            "202": accepted,
            "400": invalid(f"The body is not a JSON object of known columns with valid values{missing}, or the id "
                           "is not a positive integer."),
            "404": ref("responses", "NotFound"), **COMMON_FAILURES, **CHANGE_FAILURES},
    }
    bulk = {
        "operationId": f"bulkUpdate{camel(entity.collection)}", "tags": ["rows"],
        "summary": f"Changes many {entity.collection.replace('-', ' ')} at once; one bad item and nothing is accepted",
        "x-required-role": "writer", "security": [{"bearer": []}], "parameters": TOKEN_PARAMETERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["updates"], "additionalProperties": False,
            "properties": {"updates": {"type": "array", "maxItems": MAX_BULK_UPDATES,
                                       "items": ref("schemas", f"{name}BulkItem")}}}}}},
        "responses": {
            "202": ref("responses", "BulkAccepted"),
            "400": invalid(f"An item is invalid or names {article(' or '.join([words, *references]))} that does "
                           f"not exist (the message gives its index), or there are more than {MAX_BULK_UPDATES:,} "
                           "items."),
            **COMMON_FAILURES, **CHANGE_FAILURES},
    }
    return {
        f"/{entity.collection}/{{{entity.primary_key}}}": {
            "parameters": [{"name": entity.primary_key, "in": "path", "required": True,
                            "schema": ref("schemas", "RowId")}],
            "get": read, "patch": update},
        f"/{entity.collection}/bulk": {"post": bulk},
    }


def add_entities(document: dict, entities: list[Entity]):
    """Puts the entities' paths first in the document, their schemas among its schemas, and
    their names where the document takes an entity's name (EntityName, DeadLetterKeyText)."""
    generated = {}
    for entity in entities:
        # Copied: the operations share parts (headers, responses) that a reader of the
        # document may change in one place.
        generated.update(copy.deepcopy(paths(entity)))
        document["components"]["schemas"].update(schemas(entity))
    document["paths"] = {**generated, **document["paths"]}
    names = [entity.name for entity in entities]
    document["components"]["schemas"]["EntityName"] = {"type": "string", "enum": names}
    document["components"]["schemas"]["DeadLetterKeyText"] = {
        "description": "`<entity>:<id>`, e.g. `album:42`.", "type": "string",
        "pattern": f"^({'|'.join(names)}):[0-9]+$", "examples": [f"{names[0]}:42"]}
