"""Growing the album table by duplication, through the system's `POST /tasks/duplicate`
and by `INSERT ... SELECT` for the anchors' database; B4 is the step from B2's size to
twice that."""

import time
from typing import TYPE_CHECKING

from testkit.api import Api

from .. import stores
from ..anchors import floor
from ..measure import log

if TYPE_CHECKING:
    from ..run import Bench


def duplicate(api: Api, multiplier: int, size: int, timeout_s: float) -> tuple[int, float]:
    """Grows the album table to `size` rows through the system's `POST /tasks/duplicate`,
    polling the task every 10 ms: the rows inserted and the seconds until SUCCESS."""
    started = time.perf_counter()
    response = api.post("/tasks/duplicate", json={"multiplier": multiplier})
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    while True:
        body = api.get(f"/tasks/{task_id}").json()
        if body["state"] in ("SUCCESS", "FAILURE"):
            break
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"duplication not done: {body}")
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    if body["state"] != "SUCCESS":
        raise RuntimeError(f"duplication failed: {body}")
    count = api.sql("SELECT count(*), max(album_id) FROM album")[0]
    assert tuple(count) == (size, size), count
    return body["result"]["inserted"], seconds


def grow(bench: "Bench", multiplier: int, size: int, is_b4: bool):
    log(f"duplicating the album table x{multiplier}: {bench.table_size} -> {size} rows")
    inserted, system_s = duplicate(bench.api, multiplier, size, bench.profile.durable_timeout_s)
    anchor_rows, anchor_s = floor.insert_select_copy(bench.anchor.database_url, multiplier)
    assert inserted == anchor_rows == size - bench.table_size, (inserted, anchor_rows, size, bench.table_size)
    bench.table_size = size
    bench.results["growth"].append({
        "rows_before": size - inserted, "rows_after": size, "multiplier": multiplier,
        "system_s": round(system_s, 3), "system_rows_per_s": round(inserted / system_s, 1),
        "insert_select_s": round(anchor_s, 4), "insert_select_rows_per_s": round(anchor_rows / anchor_s, 1),
    })
    for url in (bench.isolation.database_url, bench.anchor.database_url):
        stores.analyze(url)
    if is_b4:
        bench.results["b4"] = {**bench.results["growth"][-1], "inserted": inserted}
        log(f"B4: {inserted / system_s:,.0f} rows/s via the system, {anchor_rows / anchor_s:,.0f} rows/s "
            f"via INSERT ... SELECT")
