"""Set-based SQL over the entity registry. Identifiers come from the registry and
are quoted by psycopg2.sql; every value is a bound parameter."""

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


def _apply_writes_query(entity: Entity, partial: bool) -> sql.Composed:
    # One statement per batch: unnest the arrays into rows and update where the stored
    # version is older. It returns the ids it wrote; only the others are looked up again.
    # With partial rows in the batch, a boolean array per column says which rows leave it.
    input_columns = ["id", "version", *entity.column_names]
    casts = ["int", "bigint", *(c.pg_type for c in entity.columns)]
    if partial:
        input_columns += [_keep(c) for c in entity.column_names]
        casts += ["boolean"] * len(entity.columns)
        assignment = "{col} = CASE WHEN input.{keep} THEN t.{col} ELSE input.{col} END"
    else:
        assignment = "{col} = input.{col}"
    return sql.SQL(
        "UPDATE {table} AS t SET {assignments}, {ver} = input.version "
        "FROM unnest({arrays}) AS input({input_columns}) "
        "WHERE t.{pk} = input.id AND t.{ver} < input.version RETURNING t.{pk}"
    ).format(
        arrays=sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(cast)) for cast in casts),
        input_columns=sql.SQL(", ").join(sql.Identifier(c) for c in input_columns),
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


def apply_writes(db, entity: Entity, rows: list[StoredRow]) -> WriteResult:
    """Writes each row whose version is newer than Postgres', in one statement.

    If Postgres refuses the batch (a constraint, a value it will not take), the batch
    is halved under savepoints until the refused rows are found; the rest is written.
    """
    newest = {}
    for row in rows:
        if row.id not in newest or row.version > newest[row.id].version:
            newest[row.id] = row
    # Sorted ids make concurrent batches lock shared rows in the same order.
    ordered = [newest[i] for i in sorted(newest)]
    partial = any(len(row.fields) < len(entity.columns) for row in ordered)
    query = _apply_writes_query(entity, partial)
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            with db.transaction() as cur:
                written, failed, statements = _write_isolating_refusals(cur, entity, query, ordered, partial)
                refused = {i for i, _ in failed}
                unwritten = [r.id for r in ordered if r.id not in written and r.id not in refused]
                existing = set()
                if unwritten:  # stale versions, or rows that do not exist: rare, so asked apart
                    cur.execute(_existing_ids_query(entity), (unwritten,))
                    existing = {row[0] for row in cur.fetchall()}
            break
        except psycopg2.errors.DeadlockDetected:
            if attempt == DEADLOCK_RETRIES:
                raise
            log.info("deadlock writing %d %s rows, attempt %d; retrying", len(ordered), entity.name, attempt)
    stale = sorted(i for i in unwritten if i in existing)
    missing = sorted(i for i in unwritten if i not in existing)
    return WriteResult(sorted(written), stale, missing, failed, statements)


def _write_isolating_refusals(cur, entity: Entity, query, rows: list[StoredRow], partial: bool):
    """Returns (ids written, [(id, error)] refused, statements run)."""
    arrays = [[r.id for r in rows], [r.version for r in rows]]
    arrays += [[r.fields.get(name) for r in rows] for name in entity.column_names]
    if partial:
        arrays += [[name not in r.fields for r in rows] for name in entity.column_names]
    cur.execute("SAVEPOINT write_batch")
    try:
        cur.execute(query, arrays)
        written = {row[0] for row in cur.fetchall()}
        cur.execute("RELEASE SAVEPOINT write_batch")
        return written, [], 1
    except (psycopg2.IntegrityError, psycopg2.DataError) as exc:
        cur.execute("ROLLBACK TO SAVEPOINT write_batch")
        if len(rows) == 1:
            return set(), [(rows[0].id, str(exc).strip().splitlines()[0])], 1
        middle = len(rows) // 2
        first = _write_isolating_refusals(cur, entity, query, rows[:middle], partial)
        second = _write_isolating_refusals(cur, entity, query, rows[middle:], partial)
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
