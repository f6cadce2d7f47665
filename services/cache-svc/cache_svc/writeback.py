"""Write-back logic: cache-aside reads, validated writes into the cache, and the
bookkeeping that lets workers flush them. Infrastructure comes in through the
constructor (a RowStore, a persistence client, a task publisher)."""

import logging
import random
import time
from dataclasses import dataclass
from operator import methodcaller

from chinook import metrics, tracing
from chinook.entities import (
    ENTITIES,
    INT_MAX,
    MAX_BULK_UPDATES,
    Entity,
    ValidationError,
    check_ids_and_versions,
    first_not_in_range,
    get_entity,
    parse_claim,
    parse_id,
    parse_json,
)

from .store import Backpressure, CachedRow, DeadLetter, RowState, RowStore

log = logging.getLogger(__name__)

# Rows read from Postgres into the cache at a time.
LOAD_CHUNK = 10_000
# Words for the demo's random titles.
TITLE_WORDS = (
    "Midnight", "Electric", "Silent", "Golden", "Broken", "Velvet", "Neon", "Wild", "Distant", "Crimson",
    "Echoes", "Rivers", "Machines", "Hearts", "Storms", "Dreams", "Highways", "Mirrors", "Ashes", "Signals",
)


class NotFound(Exception):
    pass


def updates_from_json(entity_name: str, text: str) -> list[tuple[int, dict]]:
    """A bulk's updates from a JSON array of objects keyed by the entity's primary key,
    as (id, columns to change) pairs for bulk_update, which validates them."""
    entity = get_entity(entity_name)
    items = parse_json(text, "updates_json")
    if not isinstance(items, list):
        raise ValidationError(f"updates: expected a list of objects with {entity.primary_key}")
    key = entity.primary_key
    if set(map(type, items)) <= {dict} and all(map(methodcaller("__contains__", key), items)):
        # Every item at once, as a bulk of 100,000 should be; one by one only to say which is wrong.
        return list(zip(map(methodcaller("pop", key), items), items, strict=True))
    updates = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or entity.primary_key not in item:
            raise ValidationError(f"updates[{index}]: expected an object with {entity.primary_key}")
        updates.append((item.pop(entity.primary_key), item))
    return updates


@dataclass(frozen=True)
class ReadOutcome:
    """One read of get_each: the row, or why there is none."""

    result: "ReadResult | None" = None
    error: Exception | None = None


@dataclass(frozen=True)
class UpdateOutcome:
    """One update of update_each: the row as accepted, or why it was not."""

    row: CachedRow | None = None
    error: Exception | None = None


def patch_from_json(text: str) -> dict:
    return parse_json(text, "fields_json")


@dataclass(frozen=True)
class ReadResult:
    row: CachedRow
    cache_hit: bool


@dataclass(frozen=True)
class Status:
    pending: int
    oldest_pending_age_s: float
    accepted_total: int
    flushed_total: int
    failed: int


@dataclass(frozen=True)
class Inspection:
    """A row as the cache holds it (None if it does not) and as Postgres holds it
    ((version, column values), None if it does not), and whether they agree."""

    entity: Entity
    id: int
    cached: RowState | None
    stored: tuple[int, dict] | None

    @property
    def cached_values(self) -> dict:
        """The cached columns by name, typed; only those written since for a partial row."""
        row = self.cached.row
        return self.entity.columns_from_store(row.fields) if row.partial else self.entity.row_from_store(row.fields)

    @property
    def agree(self) -> bool:
        """The cache does not hold the row, or holds what Postgres does, at its version."""
        if self.cached is None:
            return True
        if self.stored is None:
            return False
        version, values = self.stored
        return self.cached.row.version == version and all(
            values.get(name) == value for name, value in self.cached_values.items())


class WriteBack:
    def __init__(self, store: RowStore, persistence, lease_ms: int):
        self.store = store
        self.persistence = persistence
        # The flushes' lease (WRITEBACK_LEASE_MS): tells when a claimed row was claimed.
        self.lease_ms = lease_ms

    # Reads

    def get(self, entity_name: str, row_id: int) -> ReadResult:
        entity = get_entity(entity_name)
        row_id = parse_id(row_id)
        return self._read(entity, row_id, self.store.get(entity.name, row_id))

    def get_each(self, keys: list[tuple[str, int]]) -> list[ReadOutcome]:
        """Independent reads of (entity, id), the cached ones in one round trip to Redis;
        one that fails fails alone."""
        outcomes = [ReadOutcome()] * len(keys)
        valid = []
        for index, (entity_name, row_id) in enumerate(keys):
            try:
                valid.append((index, get_entity(entity_name), parse_id(row_id)))
            except ValidationError as exc:
                outcomes[index] = ReadOutcome(error=exc)
        cached = self.store.get_many([(entity.name, row_id) for _, entity, row_id in valid])
        for (index, entity, row_id), row in zip(valid, cached, strict=False):
            try:
                outcomes[index] = ReadOutcome(result=self._read(entity, row_id, row))
            except NotFound as exc:
                outcomes[index] = ReadOutcome(error=exc)
        return outcomes

    def inspect(self, entity_name: str, row_id: int) -> Inspection:
        """The row in the cache and in Postgres, changing neither: a row the cache lacks
        is not loaded into it."""
        entity = get_entity(entity_name)
        row_id = parse_id(row_id)
        # The cache first: a flush ending between the two reads then shows Postgres ahead
        # of a pending row, never a clean row ahead of Postgres.
        cached = self.store.inspect(entity.name, row_id, self.lease_ms)
        stored = {found_id: (version, fields) for found_id, version, fields in
                  self.persistence.get_rows(entity.name, [row_id])}.get(row_id)
        if cached is None and stored is None:
            raise NotFound(f"{entity.name} {row_id} not found")
        return Inspection(entity, row_id, cached, stored)

    def _read(self, entity: Entity, row_id: int, cached: CachedRow | None) -> ReadResult:
        """The row as cached, or loaded from Postgres on a miss."""
        metrics.CACHE_READS.labels(entity.name, "hit" if cached else "miss").inc()
        if cached:
            return ReadResult(self._completed(entity, [cached])[0], cache_hit=True)
        loaded = self._load(entity, [row_id])
        if not loaded:
            raise NotFound(f"{entity.name} {row_id} not found")
        return ReadResult(loaded[0], cache_hit=False)

    def _load(self, entity: Entity, ids: list[int], reply: bool = True) -> list:
        """Reads rows from Postgres into the cache. With reply, returns the rows found as
        cached now (or as read, where another writer or loader got there first);
        without, only the ids found."""
        token = self.store.begin_fill(entity.name, ids)
        rows = self.persistence.get_rows(entity.name, ids)
        loaded = [(row_id, entity.validate_full_row(fields, entity.name), version) for row_id, version, fields in rows]
        cached = self.store.fill(entity.name, token, loaded, reply=reply)
        if not reply:
            return [row_id for row_id, _, _ in loaded]
        return [
            (self.store.merge(entity.name, [(row_id, fields)])[0] if row and row.partial else row)
            or CachedRow(row_id, {k: str(v) for k, v in fields.items() if v is not None}, version)
            for row, (row_id, fields, version) in zip(cached, loaded, strict=False)
        ]

    def _completed(self, entity: Entity, rows: list[CachedRow]) -> list[CachedRow]:
        """The rows, with partial ones completed from Postgres first: a partial row is
        never shown, since its other columns are unknown in the cache."""
        partial = [row.id for row in rows if row.partial]
        if not partial:
            return rows
        loaded = {row_id: entity.validate_full_row(fields, entity.name)
                  for row_id, _, fields in self.persistence.get_rows(entity.name, partial)}
        merged = self.store.merge(entity.name, [(row_id, fields) for row_id, fields in loaded.items()])
        by_id = {row.id: row for row in merged if row is not None and not row.partial}
        completed = []
        for row in rows:
            if row.partial and row.id not in by_id:
                # Gone from the cache meanwhile, or from Postgres: read it as a miss.
                found = self._load(entity, [row.id])
                if not found:
                    raise NotFound(f"{entity.name} {row.id} not found")
                completed.append(found[0])
            else:
                completed.append(by_id.get(row.id, row))
        return completed

    def _ensure_cached(self, entity: Entity, ids: list[int]) -> list[int]:
        """Loads the rows not cached yet; returns the ids that exist nowhere."""
        unknown = []
        absent = self.store.uncached_ids(entity.name, ids)
        # In chunks: a row on its way from Postgres into Redis takes about 1.5 KB of
        # messages, dicts and script arguments, so a whole bulk at once would not.
        for start in range(0, len(absent), LOAD_CHUNK):
            chunk = absent[start:start + LOAD_CHUNK]
            found = set(self._load(entity, chunk, reply=False))
            unknown += [i for i in chunk if i not in found]
        return unknown

    # Writes

    def update(self, entity_name: str, row_id: int, patch: dict) -> int:
        entity = get_entity(entity_name)
        row_id = parse_id(row_id)
        fields = entity.validate_patch(patch)
        self._check_references(entity, [fields], lambda _: "")
        # Most updates hit a cached row: try at once, load from Postgres only on a miss.
        link = tracing.current_link()
        return self._accept(entity, [(row_id, fields)], links=[link] if link else None)[0]

    def update_each(self, patches: list[tuple[str, int, str]], links: list | None = None) -> list[UpdateOutcome]:
        """Independent single updates, (entity, id, JSON object of columns) each, as the
        gateway gathers them from concurrent requests: each is validated, checked and
        accepted on its own, so one that fails fails alone. links, while tracing is on:
        the context of each update's accepting span (or None), kept with its row."""
        outcomes = [UpdateOutcome()] * len(patches)
        valid: dict[str, list[tuple[int, int, dict]]] = {}
        for index, (entity_name, row_id, fields_json) in enumerate(patches):
            try:
                entity = get_entity(entity_name)
                fields = entity.validate_patch(patch_from_json(fields_json))
                valid.setdefault(entity.name, []).append((index, parse_id(row_id), fields))
            except ValidationError as exc:
                outcomes[index] = UpdateOutcome(error=exc)
        for name, items in valid.items():
            entity = get_entity(name)
            refused = self._unknown_references(entity, [fields for _, _, fields in items])
            for position, message in refused.items():
                outcomes[items[position][0]] = UpdateOutcome(error=ValidationError(message))
            items = [item for position, item in enumerate(items) if position not in refused]
            accepted = self._accept_each(entity, [(row_id, fields) for _, row_id, fields in items],
                                         [links[index] for index, _, _ in items] if links else None)
            for (index, _, _), outcome in zip(items, accepted, strict=False):
                outcomes[index] = outcome
        return outcomes

    def _accept_each(self, entity: Entity, updates: list[tuple[int, dict]],
                     links: list | None = None) -> list[UpdateOutcome]:
        outcomes = [UpdateOutcome()] * len(updates)
        todo = list(range(len(updates)))
        # Rows not cached are loaded and tried again, as in _accept.
        for _ in range(3):
            results = self.store.accept_each(entity.name, [updates[i] for i in todo],
                                             [links[i] for i in todo] if links else None)
            uncached = []
            for i, (version, row) in zip(todo, results, strict=False):
                if version > 0:
                    outcomes[i] = UpdateOutcome(row=row)
                elif version == -2:
                    outcomes[i] = UpdateOutcome(error=Backpressure(
                        f"more than {self.store.max_pending} rows are waiting to be written to Postgres "
                        "(WRITEBACK_MAX_PENDING); retry shortly"))
                else:
                    uncached.append(i)
            if not uncached:
                break
            missing = set(self._ensure_cached(entity, list(dict.fromkeys(updates[i][0] for i in uncached))))
            for i in uncached:
                if updates[i][0] in missing:
                    outcomes[i] = UpdateOutcome(error=NotFound(f"{entity.name} {updates[i][0]} not found"))
            todo = [i for i in uncached if updates[i][0] not in missing]
            if not todo:
                break
        else:
            for i in todo:
                outcomes[i] = UpdateOutcome(error=RuntimeError(
                    f"{entity.name} {updates[i][0]} keeps vanishing from the cache while being updated"))
        accepted = sum(1 for o in outcomes if o.row is not None)
        if accepted:
            metrics.WRITES_ACCEPTED.labels(entity.name).inc(accepted)
        return outcomes

    def bulk_update(self, entity_name: str, updates: list[tuple[int, dict]]) -> list[int]:
        """Validates every update first, so a bad one changes nothing, then accepts all."""
        entity = get_entity(entity_name)
        if len(updates) > MAX_BULK_UPDATES:
            raise ValidationError(f"updates: at most {MAX_BULK_UPDATES} per request, got {len(updates)}")
        ids = [row_id for row_id, _ in updates]
        if first_not_in_range(ids, 1, INT_MAX) is not None:
            ids = [parse_id(row_id, f"updates[{i}].{entity.primary_key}") for i, row_id in enumerate(ids)]
        checked = list(zip(ids, entity.validate_patches([patch for _, patch in updates], "updates"), strict=True))
        ids = list(dict.fromkeys(row_id for row_id, _ in checked))
        # Refuse a bulk that cannot fit before accepting any of it.
        if self.store.pending_total() + len(ids) > self.store.max_pending:
            raise Backpressure(
                f"{len(ids)} more pending rows would exceed WRITEBACK_MAX_PENDING={self.store.max_pending}; "
                "retry shortly or in smaller bulks"
            )
        # Rows not cached are accepted as partial rows, without reading them: only their
        # existence and the version Postgres holds are asked for.
        absent = self.store.uncached_ids(entity.name, ids)
        bases = self.persistence.get_versions(entity.name, absent) if absent else {}
        missing = {row_id for row_id in absent if row_id not in bases}
        if missing:
            index = next(i for i, (row_id, _) in enumerate(checked) if row_id in missing)
            raise ValidationError(
                f"updates[{index}].{entity.primary_key}: {entity.name} {checked[index][0]} does not exist"
                + (f" ({len(missing)} unknown ids in all)" if len(missing) > 1 else "")
            )
        self._check_references(entity, [fields for _, fields in checked], lambda i: f"updates[{i}].")
        # Every row of the bulk keeps the context of the one span that accepted it.
        link = tracing.current_link()
        return self._accept(entity, checked, bases, [link] * len(checked) if link else None)

    def randomize_album_titles(self) -> tuple[list[int], list[int]]:
        """The demo workload: a random title for every album. Returns ids and versions."""
        ids = self.persistence.list_ids("album")
        pick = random.Random().choice
        updates = [(row_id, {"title": f"{pick(TITLE_WORDS)} {pick(TITLE_WORDS)} {row_id}"}) for row_id in ids]
        return ids, self.bulk_update("album", updates)

    def _unknown_references(self, entity: Entity, patches: list[dict], where=lambda _: "") -> dict[int, str]:
        """The patches that point at rows that exist nowhere, by index, with the message."""
        refused = {}
        for column in entity.columns:
            if not column.references:
                continue
            target = get_entity(column.references)
            values = list(dict.fromkeys(p[column.name] for p in patches if p.get(column.name) is not None))
            unknown = set(self._ensure_cached(target, values))
            if not unknown:
                continue
            for index, patch in enumerate(patches):
                if patch.get(column.name) in unknown and index not in refused:
                    refused[index] = f"{where(index)}{column.name}: {target.name} {patch[column.name]} does not exist"
        return refused

    def _check_references(self, entity: Entity, patches: list[dict], where):
        refused = self._unknown_references(entity, patches, where)
        if refused:
            raise ValidationError(refused[min(refused)])

    def _accept(self, entity: Entity, updates: list[tuple[int, dict]], bases: dict | None = None,
                links: list | None = None) -> list[int]:
        versions = self.store.accept(entity.name, updates, bases, links)
        # Rows not cached (never loaded, or a clean row that expired meanwhile) are
        # loaded and tried again.
        for _ in range(3):
            retry = [i for i, version in enumerate(versions) if version < 0]
            if not retry:
                metrics.WRITES_ACCEPTED.labels(entity.name).inc(len(versions))
                return versions
            missing = self._ensure_cached(entity, [updates[i][0] for i in retry])
            if missing:
                raise NotFound(f"{entity.name} {missing[0]} not found")
            retry_links = [links[i] for i in retry] if links else None
            retried = self.store.accept(entity.name, [updates[i] for i in retry], links=retry_links)
            for i, version in zip(retry, retried, strict=False):
                versions[i] = version
        raise RuntimeError(f"{entity.name} rows keep vanishing from the cache while being updated")

    # Flushing

    def ack_flushed(self, entity_name: str, ids: list[int], versions: list[int], claim: str) -> int:
        """Marks the rows a flush task made durable clean (ids, and the version of each),
        where they are in flight under the task's claim; returns how many."""
        entity = get_entity(entity_name)
        check_ids_and_versions(ids, versions)
        claim = parse_claim(claim)
        acknowledged = self.store.ack(entity.name, ids, versions, claim)
        metrics.ROWS_FLUSHED.labels(entity.name).inc(acknowledged.flushed)
        metrics.ACCEPT_TO_DURABLE.observe_many(entity.name, [lag_ms / 1000 for lag_ms in acknowledged.lags_ms])
        if acknowledged.outdated:
            # Clean rows older than the version acknowledged: after Redis lost data, a row
            # reloaded before an earlier flush landed. Postgres, not the caller, says which
            # are stale.
            self.store.drop_outdated(entity.name, self.persistence.get_versions(entity.name, acknowledged.outdated))
        return acknowledged.cleaned

    def dead_letter(self, entity_name: str, failures: list[tuple[int, int, str]], claim: str) -> int:
        entity = get_entity(entity_name)
        check_ids_and_versions([row_id for row_id, _, _ in failures], [version for _, version, _ in failures])
        count = self.store.dead_letter(entity.name, failures, parse_claim(claim))
        if count:
            metrics.ROWS_DEAD_LETTERED.labels(entity.name).inc(count)
            log.warning("dead-lettered %d %s rows, first %s: %s", count, entity.name, failures[0][0], failures[0][2])
        return count

    def dead_letters(self, limit: int) -> tuple[list[tuple[DeadLetter, CachedRow | None]], int]:
        """The oldest dead letters with the refused values, and how many there are."""
        entries = sorted((d for name in ENTITIES for d in self.store.dead_letters(name)), key=lambda d: d.failed_at)
        return [(d, self.store.get(d.entity, d.id)) for d in entries[:limit]], len(entries)

    def resolve_dead_letter(self, entity_name: str, row_id: int, action: str) -> DeadLetter:
        entity = get_entity(entity_name)
        row_id = parse_id(row_id)
        entry = self.store.resolve_dead_letter(entity.name, row_id, action)
        if entry is None:
            raise NotFound(f"no dead letter for {entity.name} {row_id}")
        log.info("dead letter %s %s: %s", entity.name, row_id, "scheduled again" if action == "retry" else "discarded")
        return entry

    def status(self) -> Status:
        by_entity, dead_letters = self.store.summary()
        pending = sum(count for count, _ in by_entity.values())
        oldest = min((first for _, first in by_entity.values() if first is not None), default=None)
        counters = self.store.counters()
        age = max(0.0, (self.store.now_ms() - oldest) / 1000) if oldest is not None else 0.0
        return Status(pending, round(age, 3), counters.get("accepted", 0), counters.get("flushed", 0), dead_letters)

    def flush(self, wait_s: float) -> Status:
        """Makes every pending row claimable now; with wait_s, waits until none is pending."""
        self.store.expedite()
        deadline = time.monotonic() + wait_s
        status = self.status()
        while wait_s > 0 and status.pending and time.monotonic() < deadline:
            time.sleep(0.05)
            status = self.status()
        return status
