"""The rows one RowStore.claim took, one by one, as the tests look at them: a claim hands
each entity's rows over as the columnar JSON of their task."""

from dataclasses import dataclass

from chinook.entities import get_entity


@dataclass(frozen=True)
class Claimed:
    id: int
    version: int
    fields: dict  # typed, as the task carries them; a partial row's only the columns it writes
    partial: bool
    links: str  # the span contexts the row kept


def claimed_rows(shards, entity: str = "album") -> list[Claimed]:
    columns = len(get_entity(entity).columns)
    rows = []
    for shard in shards:
        batch = shard.rows.get(entity)
        if batch is None:
            continue
        kept = batch.links or ("",) * batch.count
        for (row_id, version, fields), links in zip(get_entity(entity).rows_from_columns_json(batch.rows_json), kept,
                                                     strict=True):
            rows.append(Claimed(row_id, version, fields, len(fields) < columns, links))
    return rows
