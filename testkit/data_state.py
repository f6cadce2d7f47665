"""What a refused request must leave as it was: the album and artist tables in Postgres,
and the rows, write-back bookkeeping and counters in Redis under the run's key prefix."""

import psycopg2
import requests

from chinook.entities import ENTITIES

TABLE_DIGESTS = " UNION ALL ".join(
    f"SELECT '{entity.table}', count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t.{entity.primary_key}), ''))"
    f" FROM {entity.table} t"
    for entity in ENTITIES.values()
)


class DataState:
    def __init__(self, stack, admin_token: str | None = None):
        self.gateway_url = stack.gateway_url
        self.database_url = stack.isolation.database_url
        self.store = stack.row_store()
        self.redis = self.store.redis
        # An open gateway (no token configured) flushes for anyone.
        self.admin = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}

    def settle_and_snapshot(self) -> dict:
        """Writes every pending row to Postgres first, so that no flush runs while a
        request is checked, then takes the snapshot."""
        response = requests.post(f"{self.gateway_url}/write-back/flush?wait=60", headers=self.admin, timeout=90)
        assert response.status_code == 200 and response.json()["pending"] == 0, response.text
        return self.snapshot()

    def snapshot(self) -> dict:
        with psycopg2.connect(self.database_url) as conn, conn.cursor() as cur:
            cur.execute(TABLE_DIGESTS)
            state = {f"postgres {table}": (count, digest) for table, count, digest in cur.fetchall()}
        conn.close()
        state["redis counters"] = self.store.counters()
        for shard in range(self.store.shards):
            for name in ENTITIES:
                for key in (self.store.keys.due_key(shard, name), self.store.keys.pending_key(shard, name)):
                    state[f"redis {key}"] = self.redis.zrange(key, 0, -1, withscores=True)
                key = self.store.keys.dead_key(shard, name)
                state[f"redis {key}"] = self.redis.hgetall(key)
        state["rows"] = self.cached_rows()
        return state

    def cached_rows(self) -> dict:
        # One pass over the run's keys, its rows picked out by the key layout's row
        # prefixes: SCAN walks the whole keyspace whatever it matches, so a pass per shard
        # and entity cost the shared Redis' size as many times over.
        row_prefixes = tuple(self.store.keys.row_prefix(shard, name)
                             for shard in range(self.store.shards) for name in ENTITIES)
        keys = [key for key in self.redis.scan_iter(match=f"{self.store.prefix}*", count=1000)
                if key.startswith(row_prefixes)]
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            return {key: row for key, row in zip(keys, pipe.execute(), strict=False) if row}

    def differences(self, before: dict, after: dict) -> list[str]:
        found = [f"{name}: {before[name]!r} -> {after[name]!r}"
                 for name in before if name != "rows" and before[name] != after[name]]
        # A read may load a row into the cache, and the cache may drop a clean one: neither
        # changes data. A cached row that changed, or a new one that is not clean, does.
        rows_before, rows_after = before["rows"], after["rows"]
        for key, row in rows_after.items():
            if key in rows_before and rows_before[key] != row:
                found.append(f"redis {key}: {rows_before[key]} -> {row}")
            elif key not in rows_before and ("_dirty" in row or "_partial" in row):
                found.append(f"redis {key}: new and not clean: {row}")
        found += [f"redis {key}: dirty row vanished: {row}" for key, row in rows_before.items()
                  if key not in rows_after and "_dirty" in row]
        return found

    def refusal_changed_nothing(self, before: dict):
        """A schemathesis check: a 4xx answer must leave the data as `before`."""
        def refused_request_changed_nothing(ctx, response, case):
            if 400 <= response.status_code < 500:
                differences = self.differences(before, self.snapshot())
                assert not differences, \
                    f"{response.status_code} answer, yet the data changed:\n" + "\n".join(differences[:10])
        return refused_request_changed_nothing
