"""Raw on a lake: dlt's ``upsert`` into an Iceberg table whose schema just changed (a new source
column) keeps every value; pyiceberg 0.12 alone fails it (apache/iceberg-python#2467)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import require_spark


def test_an_upsert_after_a_new_column_writes_every_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_spark()  # pyiceberg comes with the Spark engine's requirements
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table

    # pyiceberg's own upsert, even where a lake night in this process already applied the fix
    monkeypatch.setattr(Table, "upsert", getattr(Table.upsert, "__wrapped__", Table.upsert))

    from ingestion.extensions import fix_iceberg_upsert

    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=f"file://{tmp_path / 'lake'}")
    catalog.create_namespace("raw_shop")
    table = catalog.create_table("raw_shop.customers", schema=pa.schema([("id", pa.int64()), ("tier", pa.string())]))
    table.append(pa.table({"id": [1, 2], "tier": ["gold", "silver"]}))
    tonight = pa.table({"id": [2, 3], "tier": ["gold", "bronze"], "loyalty_points": [50, 0]})
    with table.update_schema() as update:  # what dlt does before it upserts
        update.union_by_name(tonight.schema)
    with pytest.raises(ValueError, match="field names are not matching"):  # pyiceberg 0.12 alone
        table.upsert(df=tonight, join_cols=["id"])  # (when this stops failing, pyiceberg fixed #2467)

    fix_iceberg_upsert()
    fix_iceberg_upsert()  # once is enough; twice changes nothing
    table.upsert(df=tonight, join_cols=["id"])
    rows = sorted(catalog.load_table("raw_shop.customers").scan().to_arrow().to_pylist(), key=lambda r: r["id"])
    assert rows == [
        {"id": 1, "tier": "gold", "loyalty_points": None},
        {"id": 2, "tier": "gold", "loyalty_points": 50},
        {"id": 3, "tier": "bronze", "loyalty_points": 0},
    ]
    table = catalog.load_table("raw_shop.customers")
    empty = [s for s in table.snapshots() if s.summary and s.summary.get("added-data-files", "0") == "0"]
    table.upsert(df=pa.table({"id": [3], "tier": ["silver"], "loyalty_points": [7]}), join_cols=["id"])
    table = catalog.load_table("raw_shop.customers")
    assert [s for s in table.snapshots() if s.summary and s.summary.get("added-data-files", "0") == "0"] == empty
    assert table.scan(row_filter="id = 3").to_arrow().to_pylist() == [{"id": 3, "tier": "silver", "loyalty_points": 7}]
