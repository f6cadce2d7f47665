"""Set-based SQL over the entity registry. Identifiers come from the registry and
are quoted by psycopg2.sql; every value is a bound parameter."""

import json
import logging
import zlib
from dataclasses import dataclass, field

import psycopg2.errors
from psycopg2 import sql
from psycopg2.extras import Json

from chinook.entities import INT_MAX, Entity

log = logging.getLogger(__name__)

VERSION_COLUMN = "wb_version"
# Deadlocks between batches that lock the same rows in another order are retried.
DEADLOCK_RETRIES = 5
DUPLICATE_CHUNK_ROWS = 20_000


def duplication_lock_key(entity: Entity) -> int:
    """The transaction-level advisory lock that serialises duplications of one table: the
    same number in every process (CRC-32, not Python's salted hash)."""
    return zlib.crc32(f"chinook.duplicate_rows.{entity.table}".encode())


class NotFound(Exception):
    pass


class PreconditionFailed(Exception):
    pass


@dataclass(frozen=True)
class StoredRow:
    id: int
    fields: dict  # to write; a column left out stays as Postgres has it
    version: int


@dataclass(frozen=True)
class WriteResult:
    applied_ids: list
    stale_ids: list
    missing_ids: list
    # (id, error) of the rows Postgres refused
    failed: list = field(default_factory=list)
    statements: int = 1


def _columns(entity: Entity):
    return sql.SQL(", ").join(sql.Identifier(c) for c in entity.column_names)


def get_rows(db, entity: Entity, ids: list[int]) -> list[StoredRow]:
    query = sql.SQL("SELECT {pk}, {cols}, {ver} FROM {table} WHERE {pk} = ANY(%s) ORDER BY {pk}").format(
        pk=sql.Identifier(entity.primary_key), cols=_columns(entity),
        ver=sql.Identifier(VERSION_COLUMN), table=sql.Identifier(entity.table),
    )
    with db.transaction() as cur:
        cur.execute(query, (list(ids),))
        records = cur.fetchall()
    names = entity.column_names
    return [StoredRow(r[0], dict(zip(names, r[1:-1], strict=False)), r[-1]) for r in records]


def _keep(column: str) -> str:
    return f"keep_{column}"


@dataclass(frozen=True)
class Batch:
    """Rows to write as columnar JSON (Entity.columns_json's form), the text Postgres reads
    them from, and its arrays by name."""

    rows_json: str
    columns: dict

    @classmethod
    def of(cls, entity: Entity, rows) -> "Batch":
        """The batch of StoredRow rows."""
        rows_json = entity.columns_json((row.id, row.version, row.fields) for row in rows)
        return cls(rows_json, entity.columns_from_json(rows_json))

    @property
    def ids(self) -> list:
        return self.columns["id"]

    @property
    def partial(self) -> bool:
        """Some row leaves columns as Postgres has them."""
        return any(self.columns.get("unset") or ())

    def subset(self, positions: list[int]) -> "Batch":
        """The rows at these positions."""
        columns = {name: [values[n] for n in positions] for name, values in self.columns.items()}
        return Batch(json.dumps(columns), columns)


def _apply_writes_query(entity: Entity, partial: bool) -> sql.Composed:
    # One statement per batch: Postgres reads the rows from the batch's JSON (no value is
    # adapted one by one on the way), keeps the newest version of each id, in the order of
    # the ids (concurrent batches lock shared rows in the same order), and updates where
    # the stored version is older. It returns the ids it wrote; only the others are looked
    # up again. With partial rows in the batch, a row's "unset" list says which columns it
    # leaves.
    names = ["id", "version", *entity.column_names]
    casts = ["int", "bigint", *(c.pg_type for c in entity.columns)]
    arrays = [sql.SQL("jsonb_array_elements_text(doc.rows -> {})").format(sql.Literal(n)) for n in names]
    values = [sql.SQL("c.{name}::{cast} AS {name}").format(name=sql.Identifier(n), cast=sql.SQL(cast))
              for n, cast in zip(names, casts, strict=True)]
    if partial:
        arrays.append(sql.SQL("jsonb_array_elements(doc.rows -> 'unset')"))
        values += [sql.SQL("coalesce(c.unset ? {col}, false) AS {keep}").format(
            col=sql.Literal(c), keep=sql.Identifier(_keep(c))) for c in entity.column_names]
        assignment = "{col} = CASE WHEN input.{keep} THEN t.{col} ELSE input.{col} END"
    else:
        assignment = "{col} = input.{col}"
    return sql.SQL(
        "UPDATE {table} AS t SET {assignments}, {ver} = input.version "
        "FROM (SELECT DISTINCT ON (id) {values} FROM (SELECT %s::jsonb AS rows) AS doc, "
        "ROWS FROM ({arrays}) AS c({columns}) ORDER BY id, version DESC) AS input "
        "WHERE t.{pk} = input.id AND t.{ver} < input.version RETURNING t.{pk}"
    ).format(
        values=sql.SQL(", ").join(values),
        arrays=sql.SQL(", ").join(arrays),
        columns=sql.SQL(", ").join(sql.Identifier(n) for n in [*names, *(["unset"] if partial else [])]),
        table=sql.Identifier(entity.table),
        assignments=sql.SQL(", ").join(
            sql.SQL(assignment).format(col=sql.Identifier(c), keep=sql.Identifier(_keep(c)))
            for c in entity.column_names
        ),
        ver=sql.Identifier(VERSION_COLUMN),
        pk=sql.Identifier(entity.primary_key),
    )


def get_versions(db, entity: Entity, ids: list[int]) -> dict[int, int]:
    """The version Postgres holds of each row that exists."""
    query = sql.SQL("SELECT {pk}, {ver} FROM {table} WHERE {pk} = ANY(%s)").format(
        pk=sql.Identifier(entity.primary_key), ver=sql.Identifier(VERSION_COLUMN),
        table=sql.Identifier(entity.table),
    )
    with db.transaction() as cur:
        cur.execute(query, (list(ids),))
        return dict(cur.fetchall())


def _existing_ids_query(entity: Entity) -> sql.Composed:
    return sql.SQL("SELECT {pk} FROM {table} WHERE {pk} = ANY(%s)").format(
        pk=sql.Identifier(entity.primary_key), table=sql.Identifier(entity.table)
    )


def apply_writes(db, entity: Entity, batch: Batch) -> WriteResult:
    """Writes each row whose version is newer than Postgres', in one statement.

    If Postgres refuses the batch (a constraint, a value it will not take), the batch
    is halved under savepoints until the refused rows are found; the rest is written.
    """
    query = _apply_writes_query(entity, batch.partial)
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            with db.transaction() as cur:
                written, failed, statements = _write_isolating_refusals(cur, query, batch)
                refused = {i for i, _ in failed}
                unwritten = sorted({i for i in batch.ids if i not in written and i not in refused})
                existing = set()
                if unwritten:  # stale versions, or rows that do not exist: rare, so asked apart
                    cur.execute(_existing_ids_query(entity), (unwritten,))
                    existing = {row[0] for row in cur.fetchall()}
            break
        except psycopg2.errors.DeadlockDetected:
            if attempt == DEADLOCK_RETRIES:
                raise
            log.info("deadlock writing %d %s rows, attempt %d; retrying", len(batch.ids), entity.name, attempt)
    stale = [i for i in unwritten if i in existing]
    missing = [i for i in unwritten if i not in existing]
    return WriteResult(sorted(written), stale, missing, failed, statements)


def _write_isolating_refusals(cur, query, batch: Batch):
    """Returns (ids written, [(id, error)] refused, statements run)."""
    cur.execute("SAVEPOINT write_batch")
    try:
        cur.execute(query, (batch.rows_json,))
        written = {row[0] for row in cur.fetchall()}
        cur.execute("RELEASE SAVEPOINT write_batch")
        return written, [], 1
    except (psycopg2.IntegrityError, psycopg2.DataError) as exc:
        cur.execute("ROLLBACK TO SAVEPOINT write_batch")
        ids = sorted(set(batch.ids))
        if len(ids) == 1:
            return set(), [(ids[0], str(exc).strip().splitlines()[0])], 1
        # Halved by id, so that every version of a row stays in the same half.
        middle = ids[len(ids) // 2]
        low = [n for n, i in enumerate(batch.ids) if i < middle]
        high = [n for n, i in enumerate(batch.ids) if i >= middle]
        first = _write_isolating_refusals(cur, query, batch.subset(low))
        second = _write_isolating_refusals(cur, query, batch.subset(high))
        return first[0] | second[0], first[1] + second[1], 1 + first[2] + second[2]


def list_ids(db, entity: Entity) -> list[int]:
    query = sql.SQL("SELECT {pk} FROM {table} ORDER BY {pk}").format(
        pk=sql.Identifier(entity.primary_key), table=sql.Identifier(entity.table)
    )
    with db.transaction() as cur:
        cur.execute(query)
        return [r[0] for r in cur.fetchall()]


def duplicate_rows(db, entity: Entity, multiplier: int, operation_id: str):
    """Multiplies the table: copy k gets ids shifted by k times the largest id.

    Runs in one transaction, so a crash leaves nothing half-done; the operation id is
    recorded with the result, so a redelivered task does not copy twice. Yields
    (done, total) after every chunk and returns the result dict.
    """
    if multiplier < 2:
        raise PreconditionFailed("multiplier must be at least 2")
    pk, table = sql.Identifier(entity.primary_key), sql.Identifier(entity.table)
    with db.transaction() as cur:
        # Serialises duplications of the table: the next one reads the grown table and
        # finds the operation recorded. Write-back goes on meanwhile: it only updates
        # existing rows, and each copy takes its row as it is when its chunk is copied.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (duplication_lock_key(entity),))
        cur.execute("SELECT result FROM wb_operation WHERE operation_id = %s", (operation_id,))
        previous = cur.fetchone()
        if previous:
            result = previous[0]
            yield result["inserted"], result["inserted"]
            return result
        cur.execute(sql.SQL("SELECT count(*), coalesce(max({pk}), 0) FROM {table}").format(pk=pk, table=table))
        rows_before, max_id = cur.fetchone()
        if max_id * multiplier > INT_MAX:
            raise PreconditionFailed(
                f"{entity.table} would need ids up to {max_id * multiplier}, beyond Postgres' int range"
            )
        total = rows_before * (multiplier - 1)
        insert = sql.SQL(
            "INSERT INTO {table} ({pk}, {cols}) SELECT {pk} + %(shift)s, {cols} FROM {table} "
            "WHERE {pk} > %(low)s AND {pk} <= %(high)s"
        ).format(table=table, pk=pk, cols=_columns(entity))
        done = 0
        yield done, total
        for copy in range(1, multiplier):
            for low in range(0, max_id, DUPLICATE_CHUNK_ROWS):
                # Only the original rows are copied, never an earlier copy.
                high = min(low + DUPLICATE_CHUNK_ROWS, max_id)
                cur.execute(insert, {"shift": copy * max_id, "low": low, "high": high})
                done += cur.rowcount
                yield done, total
        result = {"entity": entity.name, "multiplier": multiplier, "rows_before": rows_before,
                  "rows_after": rows_before + done, "inserted": done}
        cur.execute(
            "INSERT INTO wb_operation (operation_id, kind, result) VALUES (%s, %s, %s)",
            (operation_id, "duplicate_rows", Json(result)),
        )
    return result
