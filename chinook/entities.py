"""The tables that go through write-back, described once.

The cache service, the persistence service, the workers and the gateway (its routes and
its OpenAPI contract) all work from this registry, so a new table needs an entry here,
or registered from a module named in ENTITY_MODULES, and its `wb_version` column and
grants in `sql/`: no change to the machinery.
"""

import importlib
import json
import re
import secrets
import sys
from dataclasses import dataclass, field
from functools import cached_property

from chinook.config import ConfigError

# Postgres' int range: an accepted write must be one Postgres will take.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
# Write-back versions are counted in the cache's Lua scripts, whose numbers are doubles,
# exact only up to 2^53; the bound leaves 2^32 increments of room above any stored version.
MAX_VERSION = 2**53 - 2**32
# How many times a duplication may multiply a table: each copy is a full copy, so the bound
# keeps one request from filling the disk. Every service checks it, whoever calls.
MIN_MULTIPLIER, MAX_MULTIPLIER = 2, 64
# The most updates one bulk request may carry, in every service that takes bulks.
MAX_BULK_UPDATES = 100_000
# Entity names travel in keys (Redis', a dead letter's `album:42`) and collections in URLs.
_ENTITY_NAME = re.compile(r"[a-z][a-z0-9_]*")
_COLLECTION = re.compile(r"[a-z][a-z0-9_-]*")
# A flush's claim id: random, so no caller can name a claim it was not handed (in a task).
CLAIM_ID_BYTES = 16
_CLAIM_ID = re.compile(f"[0-9a-f]{{{2 * CLAIM_ID_BYTES}}}")


class ValidationError(ValueError):
    """The input breaks a rule; the message says which and where."""


def parse_json(text: str, where: str):
    """JSON text of a request; `where` names it in the error."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"{where}: not valid JSON: {exc}") from None
    except RecursionError:
        # Python's parser recurses once per level: "[[[[..." deep enough exhausts the stack.
        raise ValidationError(f"{where}: JSON nested too deeply") from None


def _plain_text(text: str) -> bool:
    """No NUL, and encodable as UTF-8 (no lone surrogate), as Column.validate asks of a string."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str  # "int" or "varchar"; the SQL cast used for batch writes
    max_length: int = 0
    nullable: bool = False
    # Name of the entity this column points at; its existence is checked on write.
    references: str | None = None

    def validate(self, value, where: str):
        if value is None:
            if self.nullable:
                return None
            raise ValidationError(f"{where}: must not be null")
        if self.pg_type == "int":
            # JSON numbers may arrive as floats (protobuf Struct); 3.0 is 3, 3.5, NaN and
            # infinity are not.
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or isinstance(value, float) and not value.is_integer()):
                raise ValidationError(f"{where}: must be an integer")
            value = int(value)
            if not INT_MIN <= value <= INT_MAX:
                raise ValidationError(f"{where}: {value} is out of range")
            return value
        if not isinstance(value, str):
            raise ValidationError(f"{where}: must be a string")
        if not 1 <= len(value) <= self.max_length:
            raise ValidationError(f"{where}: must be 1-{self.max_length} characters, got {len(value)}")
        if "\x00" in value:
            raise ValidationError(f"{where}: must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{where}: is not valid Unicode") from None
        return value

    def validate_all(self, values: list, where: str, skip=frozenset()):
        """validate() of every value but those at the positions `skip`, for a batch's column
        at once: whole lists are checked by builtins, and a value is looked at alone only to
        say which one is wrong."""
        present = [v for i, v in enumerate(values) if i not in skip] if skip else values
        if self.nullable:
            present = [v for v in present if v is not None]
        if self.pg_type == "int":
            ok = first_not_in_range(present, INT_MIN, INT_MAX) is None
        else:
            ok = not present or (set(map(type, present)) == {str} and 1 <= min(map(len, present))
                                 and max(map(len, present)) <= self.max_length and _plain_text("".join(present)))
        if ok:
            return
        for i, value in enumerate(values):
            if i in skip:
                continue
            self.validate(value, f"{where}[{i}]")
            if self.pg_type == "int" and type(value) is not int and value is not None:
                raise ValidationError(f"{where}[{i}]: must be an integer")
        raise ValidationError(f"{where}: invalid values")

    def from_store(self, raw):
        """Converts a value read back from a string store (Redis) to its type; NUL, which
        no value may contain, stands for NULL where absence cannot."""
        if raw is None or raw == "\0":
            return None
        return int(raw) if self.pg_type == "int" else raw


@dataclass(frozen=True)
class Entity:
    name: str  # singular, as in RPCs, keys and dead letters: "album"
    collection: str  # the HTTP API's path segment: "albums" in /albums/<album_id>
    table: str
    primary_key: str
    # The columns a write may change; the primary key is not one of them.
    columns: tuple[Column, ...] = field(default_factory=tuple)

    # Cached: a bulk validates up to 100,000 patches against them.
    @cached_property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def _columns_by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    def column(self, name: str) -> Column:
        return self._columns_by_name[name]

    def validate_patch(self, patch, where: str = "") -> dict:
        """Checks a partial update; returns it with values converted to their types.

        References to other entities are checked by the caller, which can see them.
        """
        prefix = f"{where}." if where else ""
        if not isinstance(patch, dict):
            raise ValidationError(f"{where or 'body'}: must be a JSON object")
        if not patch:
            raise ValidationError(f"{where or 'body'}: give at least one of {', '.join(self.column_names)}")
        unknown = sorted(set(patch) - self._columns_by_name.keys())
        if unknown:
            raise ValidationError(
                f"{prefix}{unknown[0]}: unknown field for {self.name}; allowed: {', '.join(self.column_names)}"
            )
        columns = self._columns_by_name
        return {name: columns[name].validate(value, prefix + name) for name, value in patch.items()}

    def validate_patches(self, patches: list, where: str) -> list[dict]:
        """validate_patch of each of a bulk's patches (`where[i]` naming a bad one): whole
        columns at once when every patch is a non-empty object of known columns holding
        values of their exact types, one by one otherwise (to convert what needs it, or to
        say which is wrong)."""
        known = self._columns_by_name
        if (set(map(type, patches)) <= {dict} and all(patches)
                and set().union(*map(dict.keys, patches)) <= known.keys()):
            try:
                for name, column in known.items():
                    column.validate_all([p[name] for p in patches if name in p], name)
                return patches
            except ValidationError:
                pass
        return [self.validate_patch(patch, f"{where}[{i}]") for i, patch in enumerate(patches)]

    def validate_full_row(self, values, where: str = "") -> dict:
        """Checks a whole row, as a flush writes it: every column present and valid."""
        missing = [name for name in self.column_names if isinstance(values, dict) and name not in values]
        if missing:
            raise ValidationError(f"{where or 'row'}: missing {', '.join(missing)}")
        return self.validate_patch(values, where)

    def row_from_store(self, raw: dict) -> dict:
        return {c.name: c.from_store(raw.get(c.name)) for c in self.columns}

    def columns_from_store(self, raw: dict) -> dict:
        """Only the columns present, for a partial row, where absent means unknown."""
        return {c.name: c.from_store(raw[c.name]) for c in self.columns if c.name in raw}

    def columns_json(self, rows) -> str:
        """(id, version, fields) rows as columnar JSON, one array per column (the form
        the services exchange batches of rows in). A row without some columns (a
        partial row, whose other columns must stay as they are) lists them in "unset"."""
        rows = list(rows)
        columns = {"id": [r[0] for r in rows], "version": [r[1] for r in rows]}
        for name in self.column_names:
            columns[name] = [r[2].get(name) for r in rows]
        unset = [[name for name in self.column_names if name not in r[2]] for r in rows]
        if any(unset):
            columns["unset"] = unset
        return json.dumps(columns)

    def columns_from_json(self, text: str, where: str = "rows_json") -> dict:
        """columns_json's form read back as its arrays by name, checked for shape only."""
        columns = parse_json(text, where)
        names = ("id", "version", *self.column_names)
        if not isinstance(columns, dict) or not all(isinstance(columns.get(n), list) for n in names):
            raise ValidationError(f"{where}: expected an object with the arrays {', '.join(names)}")
        unknown = sorted(set(columns) - {*names, "unset"})
        if unknown:
            raise ValidationError(f"{where}: unknown arrays {', '.join(unknown)}; {self.name} has {', '.join(names)}")
        count = len(columns["id"])
        if any(len(columns[n]) != count for n in names):
            raise ValidationError(f"{where}: the arrays {', '.join(names)} must have the same length")
        unset = columns.get("unset")
        if unset is not None:
            if not isinstance(unset, list) or len(unset) != count:
                raise ValidationError(f"{where}: unset must be a list of column lists, one per row")
            for names in unset:
                if not isinstance(names, list) or not all(name in self.column_names for name in names):
                    raise ValidationError(f"{where}: unset lists unknown columns: {names}")
        return columns

    def validate_columns(self, columns: dict, where: str = "rows"):
        """Checks the arrays of columns_from_json as validate_patch checks each row: every
        value a row writes valid, every row writing at least one column, its id and version
        in range."""
        check_ids_and_versions(columns["id"], columns["version"], where)
        unset = columns.get("unset") or ()
        for i, names in enumerate(unset):
            if set(names) >= set(self.column_names):
                raise ValidationError(f"{where}.unset[{i}]: a row must write at least one column of {self.name}")
        for column in self.columns:
            left = {i for i, names in enumerate(unset) if column.name in names}
            column.validate_all(columns[column.name], f"{where}.{column.name}", left)

    def rows_from_columns_json(self, text: str, where: str = "rows_json") -> list[tuple]:
        """The (id, version, fields) rows of columns_json's form, unchecked beyond its shape."""
        columns = self.columns_from_json(text, where)
        values = [columns[n] for n in self.column_names]
        rows = [(row_id, version, dict(zip(self.column_names, row, strict=False)))
                for row_id, version, *row in zip(columns["id"], columns["version"], *values, strict=False)]
        for (_, _, fields), names in zip(rows, columns.get("unset") or (), strict=False):
            for name in names:
                fields.pop(name, None)
        return rows

    def row_json(self, row_id: int, raw: dict) -> str:
        """A row read from a string store as the HTTP API shows it, primary key first."""
        return json.dumps({self.primary_key: row_id, **self.row_from_store(raw)})


ENTITIES: dict[str, Entity] = {}
# The gateway's first path segments that are not collections: an entity named so would
# have its routes shadowed by, or shadow, the fixed ones.
RESERVED_COLLECTIONS = frozenset({
    "tasks", "write-back", "openapi.json", "docs", "console", "healthz", "readyz", "metrics",
    "album", "update-album", "duplicate_database", "get_task_result",  # the seed's routes
})


def register(entity: Entity) -> Entity:
    """Adds an entity to the registry, which every service reads from its start on: call
    it at import of a module ENTITY_MODULES names (register_modules), so that each
    process (gateway, cache-svc, persistence-svc, workers) knows the same entities."""
    if not _ENTITY_NAME.fullmatch(entity.name) or not _COLLECTION.fullmatch(entity.collection):
        raise ValueError(f"entity {entity.name!r} (collection {entity.collection!r}): names must be lower-case "
                         "letters, digits and _ (a collection also -), starting with a letter")
    if entity.collection in RESERVED_COLLECTIONS:
        raise ValueError(f"collection {entity.collection!r} of {entity.name!r} is a path of the gateway's own; "
                         f"choose another (reserved: {', '.join(sorted(RESERVED_COLLECTIONS))})")
    if ENTITIES.get(entity.name, entity) != entity:
        raise ValueError(f"entity {entity.name!r} is registered already, differently")
    owner = next((other.name for other in ENTITIES.values()
                  if other.collection == entity.collection and other.name != entity.name), None)
    if owner is not None:
        raise ValueError(f"collection {entity.collection!r} of {entity.name!r} belongs to {owner!r} already")
    for column in entity.columns:
        if column.name.startswith("_"):
            raise ValueError(f"{entity.name}.{column.name}: columns starting with _ clash with cache metadata")
    ENTITIES[entity.name] = entity
    return entity


def register_modules(names: str):
    """Imports the modules of ENTITY_MODULES (comma-separated), each registering its
    entities when imported; every service's start calls it before it serves."""
    for name in filter(None, (part.strip() for part in names.split(","))):
        try:
            importlib.import_module(name)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"ENTITY_MODULES: {name}: {exc}") from None


def register_modules_or_exit(names: str):
    """register_modules() for entry points: a module that cannot register stops the process."""
    try:
        register_modules(names)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")


register(Entity(
    name="album",
    collection="albums",
    table="album",
    primary_key="album_id",
    columns=(
        Column("title", "varchar", max_length=160),
        Column("artist_id", "int", references="artist"),
    ),
))
register(Entity(
    name="artist",
    collection="artists",
    table="artist",
    primary_key="artist_id",
    columns=(Column("name", "varchar", max_length=120, nullable=True),),
))


def get_entity(name: str) -> Entity:
    try:
        return ENTITIES[name]
    except KeyError:
        raise ValidationError(f"unknown entity {name!r}; known: {', '.join(ENTITIES)}") from None


def parse_id(raw, where: str = "id") -> int:
    """A primary key from a URL or JSON: a positive integer in Postgres' int range."""
    if isinstance(raw, str):
        if not raw.isdecimal() or not raw.isascii():
            raise ValidationError(f"{where}: must be a positive integer, got {raw!r}")
        # Python's int() refuses more than 4,300 digits with ValueError, and is slow before.
        digits = raw.lstrip("0") or "0"
        if len(digits) > len(str(INT_MAX)):
            raise ValidationError(f"{where}: out of range 1-{INT_MAX}, got {len(digits)} digits")
        raw = int(digits)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValidationError(f"{where}: must be a positive integer")
    if not 1 <= raw <= INT_MAX:
        raise ValidationError(f"{where}: {raw} is out of range")
    return raw


def parse_version(raw, where: str = "version") -> int:
    """A write-back version: an integer in 0..MAX_VERSION."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_VERSION:
        raise ValidationError(f"{where}: must be an integer in 0..2^53-2^32")
    return raw


def first_not_in_range(values, low: int, high: int) -> int | None:
    """The first position of `values` that is not an integer (bool is none) in low..high,
    or None: whole sequences at once, for batches of ids and versions."""
    if not values or set(map(type, values)) == {int} and low <= min(values) and max(values) <= high:
        return None
    return next(i for i, v in enumerate(values) if type(v) is not int or not low <= v <= high)


def check_ids_and_versions(ids, versions, where: str = "rows"):
    """Checks a batch's ids (1..INT_MAX) and versions (0..MAX_VERSION), given as two
    sequences, as parse_id and parse_version do one by one; the message names the first
    bad one."""
    bad = first_not_in_range(ids, 1, INT_MAX)
    if bad is not None:
        if type(ids[bad]) is not int:
            raise ValidationError(f"{where}.id[{bad}]: the id must be an integer")
        parse_id(ids[bad], f"{where}.id[{bad}]")
    bad = first_not_in_range(versions, 0, MAX_VERSION)
    if bad is not None:
        parse_version(versions[bad], f"{where}.version[{bad}]")


def parse_multiplier(raw, where: str = "multiplier") -> int:
    """How many times a duplication multiplies a table: MIN_MULTIPLIER..MAX_MULTIPLIER."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValidationError(f"{where}: must be an integer")
    if not MIN_MULTIPLIER <= raw <= MAX_MULTIPLIER:
        raise ValidationError(f"{where}: must be {MIN_MULTIPLIER}-{MAX_MULTIPLIER}, got {raw}")
    return raw


def new_claim_id() -> str:
    return secrets.token_hex(CLAIM_ID_BYTES)


def parse_claim(raw, where: str = "claim") -> str:
    """A flush's claim id, as new_claim_id makes them."""
    if not isinstance(raw, str) or not _CLAIM_ID.fullmatch(raw):
        raise ValidationError(f"{where}: must be the claim id of a flush task, {2 * CLAIM_ID_BYTES} hex digits")
    return raw
