"""`dusk resync`: a table's cursor forgotten, the next night reads it in full and merges it (raw
stays equal to the source, deleted rows stay marked); the other tables read only their changes;
kinds and tables it cannot re-extract are refused, naming what to do instead."""

from __future__ import annotations

import sqlite3

import duckdb
import pytest

from tests.conftest import Workspace

pytestmark = pytest.mark.e2e


def test_a_resynced_table_is_read_in_full_by_the_next_night(workspace: Workspace) -> None:
    ws = workspace
    ws.cli("run")
    with sqlite3.connect(ws.shop_db) as shop:
        (orders,) = shop.execute("select count(*) from orders").fetchone()
        (gone,) = shop.execute("select order_id from orders order by order_id limit 1").fetchone()
        shop.execute("delete from order_items where order_id = ?", [gone])
        shop.execute("delete from orders where order_id = ?", [gone])
    ws.cli("run")  # key-diff marks the deleted order
    out = ws.cli("resync", "shop", "--table", "orders")
    assert "shop: orders will be read in full by the next run" in out.stdout

    ws.cli("run")
    tables = {t["table"]: t for s in ws.last_run()["sources"] if s["source"] == "shop" for t in s["tables"]}
    assert tables["orders"]["extracted"] == orders - 1  # every live order, read again
    assert tables["customers"]["extracted"] == 0  # the others: only their changes (none)
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        counts = wh.execute("select count(*), count(distinct order_id) from raw_shop.orders").fetchone()
        assert counts == (orders, orders)
        assert wh.execute("select _is_deleted from raw_shop.orders where order_id = ?", [gone]).fetchone() == (True,)
    ws.cli("run")  # and the cursor is back: the next night reads nothing again
    tables = {t["table"]: t for s in ws.last_run()["sources"] if s["source"] == "shop" for t in s["tables"]}
    assert tables["orders"]["extracted"] == 0


def test_what_cannot_be_resynced_is_refused_naming_what_to_do(workspace: Workspace) -> None:
    out = workspace.cli("resync", "marketing", check=False)
    assert out.returncode == 1 and "drop the files into its landing folder again" in out.stderr, out.stderr
    out = workspace.cli("resync", "shop", "--table", "invoices", check=False)
    assert out.returncode == 1 and "declares no table invoices" in out.stderr, out.stderr
    out = workspace.cli("resync", "nowhere", check=False)
    assert out.returncode == 2 and "no source 'nowhere'" in out.stderr, out.stderr
