"""One code path, three engines: the demo shop on PostgreSQL and MariaDB, loaded incrementally
with deletes, exactly as on SQLite. Each test creates its own database and drops it afterwards.

Skips with the reason where a server is not reachable; fails instead when CI=true."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from dusk.demo import demo_shop, ensure_demo
from dusk.settings import Settings
from ingestion.dlt_settings import configure_dlt
from tests.helpers import SHOP_KEYS, ingest, key_set, sources

KEYS = SHOP_KEYS


def live_keys(settings: Settings, table: str) -> set[object]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return key_set(con.sql(f"select {KEYS[table]} from raw_shop.{table} where not _is_deleted").fetchall())


def source_keys(url: str, table: str) -> set[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as con:
            return key_set(con.execute(sa.text(f"select {KEYS[table]} from {table}")))
    finally:
        engine.dispose()


def test_demo_shop_loads_incrementally_with_deletes(
    shop_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_dlt()
    monkeypatch.setenv("SOURCES__SHOP__CREDENTIALS", shop_url)
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=True, demo_seed=11)
    specs = sources()
    assert ensure_demo(settings, specs)
    spec = specs["shop"]

    first = ingest(spec, settings)
    assert first.ok, first.error
    for table in KEYS:
        assert live_keys(settings, table) == source_keys(shop_url, table), table

    shop = demo_shop(settings, specs)
    try:
        days = shop.simulate(2)
    finally:
        shop.dispose()
    second = ingest(spec, settings)
    assert second.ok, second.error
    stats = {t.table: t for t in second.tables}
    for table in KEYS:
        assert live_keys(settings, table) == source_keys(shop_url, table), table
        touched = {pk for d in days for t, pk, op in d.changes if t == table and op in ("insert", "update")}
        alive = source_keys(shop_url, table)
        assert stats[table].extracted == len(touched & alive), table
    assert stats["customers"].deleted >= 2
    assert stats["orders"].deleted >= 1
