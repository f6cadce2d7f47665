"""What a task may carry. Whoever can publish to the task queues can send a task, so a
worker checks every task before acting on it. A malformed one is refused, never retried,
and changes nothing: the rows it names, if real, are still dirty in the cache, and their
lease brings them back in a task of the flusher's own."""

import re

from chinook.config import MAX_WRITEBACK_BATCH_SIZE
from chinook.entities import ENTITIES, ValidationError, check_ids_and_versions, parse_claim, parse_multiplier
from chinook.tracing import LINK_WIDTH, LINKS_PER_ROW, MAX_FLUSH_LINKS

_LINK = re.compile(f"[0-9a-f]{{{LINK_WIDTH}}}")


class MalformedTask(Exception):
    """A task's arguments break a rule; the message says which."""


def _entity(raw):
    # The name is not echoed: a task may carry anything, of any length.
    if not isinstance(raw, str) or raw not in ENTITIES:
        raise ValidationError(f"entity: must be one of {', '.join(ENTITIES)}")
    return ENTITIES[raw]


def _count(raw, where: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise ValidationError(f"{where}: must be an integer in {low}..{high}")
    return raw


def _check_rows(entity, rows_json) -> dict:
    """Rows as columnar JSON (Entity.columns_json's form): at most MAX_WRITEBACK_BATCH_SIZE,
    each with an integer id, a version and at least one column; the values are
    persistence-svc's to check. Returns the columns."""
    if not isinstance(rows_json, str):
        raise ValidationError("rows: must be the rows as columnar JSON text")
    columns = entity.columns_from_json(rows_json, "rows")
    ids, versions = columns["id"], columns["version"]
    if len(ids) > MAX_WRITEBACK_BATCH_SIZE:
        raise ValidationError(f"rows: must hold at most {MAX_WRITEBACK_BATCH_SIZE} rows, got {len(ids)}")
    check_ids_and_versions(ids, versions)
    for i, names in enumerate(columns.get("unset") or ()):
        if set(names) >= set(entity.column_names):
            raise ValidationError(f"rows.unset[{i}]: a row must write at least one column of {entity.name}")
    return columns


def check_apply_writes(entity, rows, claim, refusals, links, links_dropped, max_attempts: int) -> dict:
    """An apply_writes task as the flusher publishes it (and as a retry republishes it):
    a known entity, at most MAX_WRITEBACK_BATCH_SIZE rows as columnar JSON, the claim id
    they were claimed under, fewer refusals than max_attempts (WRITEBACK_MAX_ATTEMPTS),
    links within tracing's bounds. Returns the rows' columns; raises MalformedTask."""
    try:
        columns = _check_rows(_entity(entity), rows)
        if claim is None:
            raise ValidationError("claim: missing, as in a task published before acknowledgements named their "
                                  "claim; its rows are claimed again when their lease ends")
        parse_claim(claim)
        _count(refusals, "refusals", 0, max_attempts - 1)
        if not isinstance(links, (list, tuple)) or len(links) > MAX_FLUSH_LINKS:
            raise ValidationError(f"links: must be a list of at most {MAX_FLUSH_LINKS} span contexts")
        if not all(isinstance(link, str) and _LINK.fullmatch(link) for link in links):
            raise ValidationError(f"links: each must be a span context of {LINK_WIDTH} hex digits")
        _count(links_dropped, "links_dropped", 0, MAX_WRITEBACK_BATCH_SIZE * LINKS_PER_ROW)
    except ValidationError as exc:
        raise MalformedTask(str(exc)) from None
    return columns


def check_duplicate_rows(entity, multiplier):
    """A duplicate_rows task: a known entity and a multiplier of 2..64. Raises MalformedTask."""
    try:
        _entity(entity)
        parse_multiplier(multiplier)
    except ValidationError as exc:
        raise MalformedTask(str(exc)) from None
