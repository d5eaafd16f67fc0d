"""`dusk backfill --start --end`: re-extract a window without moving the incremental cursors,
rebuild what it feeds, and change nothing when the window was already loaded (idempotence)."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest

from tests.conftest import Workspace
from tests.test_end_to_end import assert_raw_matches_source

pytestmark = pytest.mark.e2e

MARTS = ("orders", "customers", "daily_revenue", "products", "marketing_roas", "cohort_retention", "daily_web_activity")
BOOKKEEPING = {"orders": "* exclude (last_load)"}
"""The load watermark: a backfill re-merges rows with a new load id, by design."""


def cursors(ws: Workspace) -> dict[str, Any]:
    """The incremental cursor of every shop table and of the payments API."""
    found = {}
    for source, tables in (("shop", ("customers", "products", "orders", "order_items")), ("payments", ("payments",))):
        state = dlt.attach(source, pipelines_dir=str(ws.data_dir / "dlt")).state
        for table in tables:
            found[f"{source}.{table}"] = state["sources"][source]["resources"][table]["incremental"]["updated_at"][
                "last_value"
            ]
    return found


def assert_same_warehouse(ws: Workspace, before: Path) -> None:
    """Every mart and snapshot, and raw's row counts, equal those of the copy ``before``."""
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        wh.execute(f"attach '{before}' as before (read_only)")
        relations = [f"marts.{m}" for m in MARTS] + ["snapshots.customers_snapshot", "snapshots.products_snapshot"]
        for relation in relations:
            columns = BOOKKEEPING.get(relation.split(".")[1], "*")
            for a, b in ((relation, f"before.{relation}"), (f"before.{relation}", relation)):
                (diff,) = wh.execute(
                    f"select count(*) from (select {columns} from {a} except all select {columns} from {b})"
                ).fetchone()
                assert diff == 0, f"{relation} changed ({a} minus {b}: {diff} rows)"
        for table in ("raw_shop.orders", "raw_shop.order_items", "raw_shop.customers", "raw_payments.payments"):
            assert (
                wh.execute(f"select count(*) from {table}").fetchone()
                == wh.execute(f"select count(*) from before.{table}").fetchone()
            ), table


def test_backfill_reloads_a_window_idempotently_without_moving_cursors(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    ws.cli("run")
    ws.cli("simulate", "--days", "2")
    ws.cli("run")
    with sqlite3.connect(ws.shop_db) as shop:
        (last,) = shop.execute("select max(updated_at) from orders").fetchone()
    last_day = datetime.fromisoformat(last).date()
    first_day = last_day - timedelta(days=1)
    with sqlite3.connect(ws.shop_db) as shop:
        (in_window,) = shop.execute(
            "select count(*) from orders where updated_at >= ? and updated_at < ?",
            [first_day.isoformat(), (last_day + timedelta(days=1)).isoformat()],
        ).fetchone()
    assert in_window > 0
    cursors_before = cursors(ws)
    before = tmp_path / "before.duckdb"
    shutil.copy(ws.warehouse, before)

    for attempt in (1, 2):  # the same backfill twice: the second changes nothing either
        out = ws.cli("backfill", "--start", first_day.isoformat(), "--end", last_day.isoformat())
        record = ws.last_run()
        assert record["mode"] == f"backfill {first_day}..{last_day}" and record["status"] == "success", attempt
        assert {s["source"] for s in record["sources"]} == {"shop", "payments"}  # files and streams cannot
        orders = next(t for s in record["sources"] for t in s["tables"] if t["table"] == "orders")
        assert orders["extracted"] == in_window and orders["deleted"] == 0, (attempt, orders)
        payments = next(s for s in record["sources"] if s["source"] == "payments")
        assert payments["tables"][0]["loaded"] > 0
        assert "Published:" in out.stdout
        assert cursors(ws) == cursors_before, "a backfill must not move the incremental cursors"
        assert_same_warehouse(ws, before)

    # the nightly goes on where it was
    ws.cli("simulate", "--days", "1")
    ws.cli("run")
    assert_raw_matches_source(ws)
    nightly = next(s for s in ws.last_run()["sources"] if s["source"] == "shop")
    orders = next(t for t in nightly["tables"] if t["table"] == "orders")
    assert 0 < orders["extracted"] < in_window * 3
    assert cursors(ws)["shop.orders"] > cursors_before["shop.orders"]


def test_backfill_refuses_what_it_cannot_do(workspace: Workspace) -> None:
    ws = workspace
    bad = ws.cli("backfill", "--start", "2026-01-05", "--end", "2026-01-01", check=False)
    assert bad.returncode == 2 and "before --start" in bad.stderr
    files = ws.cli("backfill", "--start", "2026-01-01", "--end", "2026-01-02", "--source", "marketing", check=False)
    assert files.returncode == 1
    assert "cannot backfill marketing" in " ".join(files.stdout.split())
