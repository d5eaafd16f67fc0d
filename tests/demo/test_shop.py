"""The demo shop is deterministic and its simulator records what it did."""

from __future__ import annotations

import sqlite3
from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa

from dusk.demo.shop import TABLES, Shop


def dump(shop: Shop) -> dict[str, list[tuple]]:
    with shop.engine.connect() as con:
        return {
            name: [tuple(r) for r in con.execute(sa.select(t).order_by(*t.primary_key.columns))]
            for name, t in TABLES.items()
        }


def make(tmp_path: Path, name: str, seed: int = 3) -> Shop:
    folder = tmp_path / name
    folder.mkdir()
    return Shop(f"sqlite:///{folder / 'shop.sqlite'}", folder / "truth.sqlite", seed=seed)


def test_same_seed_same_shop(tmp_path: Path) -> None:
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c", seed=4)
    for shop in (a, b, c):
        shop.create(customers_n=200, products_n=40, orders_n=300)
        shop.simulate(2)
    assert dump(a) == dump(b)
    assert dump(a) != dump(c)


def test_simulated_days_change_delete_and_record_truth(tmp_path: Path) -> None:
    shop = make(tmp_path, "shop")
    shop.create(customers_n=200, products_n=40, orders_n=300)
    before = shop.row_counts()
    (day,) = shop.simulate(1)
    after = shop.row_counts()
    assert shop.last_day() == 1
    for table in TABLES:
        added = day.count(table, "insert") + day.count(table, "restore")
        assert after[table] == before[table] + added - day.count(table, "delete"), table
    assert day.count("customers", "update") > 0 and day.count("customers", "delete") >= 1
    assert day.count("products", "update") == 5
    with sqlite3.connect(shop.truth_path) as truth:
        (ties,) = truth.execute("select count(*) from changes where table_name = 'products' and day = 1").fetchone()
        deleted = truth.execute("select customer_id from customer_versions where day = 1 and is_deleted = 1").fetchall()
        invalid = truth.execute("select table_name, rule from invalid_rows where day = 1").fetchall()
    assert ties >= 5
    with shop.engine.connect() as con:
        # the price batch shares one updated_at: ties at the watermark
        stamps = con.execute(
            sa.text("select count(distinct updated_at) from products where updated_at >= '2026-01-01'")
        )
        assert stamps.scalar_one() == 1
        for (cid,) in deleted:
            assert con.execute(sa.text(f"select count(*) from customers where customer_id = {cid}")).scalar_one() == 0
    assert ("order_items", "non_positive_quantity") in invalid


def test_never_overwrites_a_database_it_did_not_create(tmp_path: Path) -> None:
    folder = tmp_path / "real"
    folder.mkdir()
    with sqlite3.connect(folder / "shop.sqlite") as con:
        con.execute("create table customers (customer_id integer primary key, note text)")
        con.execute("insert into customers values (1, 'precious')")
    shop = Shop(f"sqlite:///{folder / 'shop.sqlite'}", folder / "truth.sqlite")
    assert not shop.exists()
    with pytest.raises(RuntimeError, match=r"refusing to create the demo shop.*DUSK_DEMO=0"):
        shop.create()
    # Even with a truth file left by an earlier demo, the simulator will not write to it.
    shop.truth_path.write_bytes(b"")
    shop.last_day()
    assert not shop.exists()
    with pytest.raises(RuntimeError, match="not a demo shop database"):
        shop.simulate(1)
    with sqlite3.connect(folder / "shop.sqlite") as con:
        assert con.execute("select note from customers").fetchall() == [("precious",)]


def test_some_days_restore_a_customer_deleted_earlier_as_it_was(tmp_path: Path) -> None:
    """A restore from a backup: the customer is back with every value it had when deleted, so its
    updated_at is older than the day that deleted it; the truth records the return."""
    shop = make(tmp_path, "shop")
    shop.create(customers_n=200, products_n=40, orders_n=300)
    shop.simulate(10)
    with sqlite3.connect(shop.truth_path) as truth:
        versions = truth.execute(
            "select customer_id, day, is_deleted, updated_at, tier, email from customer_versions "
            "order by customer_id, day, rowid"
        ).fetchall()
    restored = [
        (now[0], now[1]) for before, now in pairwise(versions) if before[0] == now[0] and before[2] and not now[2]
    ]
    assert restored, "ten days restored no customer"
    history = {}
    for cid, day, *values in versions:
        history.setdefault(cid, []).append((day, *values))
    with shop.engine.connect() as con:
        for cid, day in restored:
            (deleted_day, _, *deleted), (_, _, *back) = [v for v in history[cid] if v[0] <= day][-2:]
            assert back == deleted and deleted_day < day  # as it was when deleted, on a later day
            assert back[0] < f"2026-01-{day:02d}"  # its updated_at lies before the restoring day
            if history[cid][-1][1] == 0:
                assert con.execute(sa.text(f"select count(*) from customers where customer_id = {cid}")).scalar_one()


def test_an_older_shop_gets_the_tables_added_since(tmp_path: Path) -> None:
    """A demo shop made before stock_levels existed gets the table, filled as day 0 and recorded
    in the truth file, and simulates on; a table missing for another reason is left missing."""
    shop = make(tmp_path, "old")
    shop.create(customers_n=50, products_n=10, orders_n=30)
    with shop.engine.begin() as con:
        con.execute(sa.text("drop table stock_levels"))
    with sqlite3.connect(shop.truth_path) as truth:  # an older version recorded no stock
        truth.execute("delete from changes where table_name = 'stock_levels'")
    assert shop.add_missing_tables() == ["stock_levels"]
    assert shop.add_missing_tables() == []
    with shop.engine.connect() as con:
        (lines,) = con.execute(sa.text("select count(*) from stock_levels")).fetchone()
    with sqlite3.connect(shop.truth_path) as truth:
        (recorded,) = truth.execute(
            "select count(*) from changes where table_name = 'stock_levels' and day = 0"
        ).fetchone()
    assert lines == recorded >= 10
    shop.simulate(1)
    with shop.engine.begin() as con:
        con.execute(sa.text("alter table orders rename to purchases"))
    assert shop.add_missing_tables() == []
    shop.dispose()


def test_a_scaled_shop_is_that_many_times_larger_and_changes_the_same_share(tmp_path: Path) -> None:
    """DUSK_DEMO_SCALE: the tables and each day's activity grow together, so a day changes about
    the same share of the shop at every scale (and scale 1 is the demo as it always was)."""
    sizes, shares = {}, {}
    for scale in (1, 4):
        folder = tmp_path / f"x{scale}"
        folder.mkdir()
        shop = Shop(f"sqlite:///{folder / 'shop.sqlite'}", folder / "truth.sqlite", seed=3, scale=scale)
        shop.create(customers_n=200, products_n=40, orders_n=300)
        sizes[scale] = shop.row_counts()
        (day,) = shop.simulate(1)
        shares[scale] = len(day.changes) / sum(shop.row_counts().values())
        shop.dispose()
    assert {t: sizes[4][t] / sizes[1][t] for t in ("customers", "products", "orders")} == {
        "customers": 4.0,
        "products": 4.0,
        "orders": 4.0,
    }
    assert 0.5 < shares[4] / shares[1] < 1.5, shares
    unscaled = make(tmp_path, "plain")
    unscaled.create(customers_n=200, products_n=40, orders_n=300)
    unscaled.simulate(1)
    scaled_once = Shop(f"sqlite:///{tmp_path / 'x1' / 'shop.sqlite'}", tmp_path / "x1" / "truth.sqlite", seed=3)
    assert dump(unscaled) == dump(scaled_once)
