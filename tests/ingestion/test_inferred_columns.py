"""Files without declared columns: every column is typed from the data on first load (exact
decimals, never floats), pinned in raw, evolved by new columns, and a later value that does not
fit its pinned type is quarantined with the reason, never rounded or retyped."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dusk.settings import Settings
from ingestion.declaration import SourceSpec
from ingestion.dlt_settings import configure_dlt
from tests.helpers import ingest, raw, sources

SOURCES_YML = """
sources:
  drops:
    kind: files
    description: a foreign shop's files, declared without columns
    files:
      path: {landing}
      archive: false
      max_bad_share: 0.5
    tables:
      sales:
        pattern: "sales_*.csv"
        primary_key: sale_id
      events:
        pattern: "events_*.jsonl"
        primary_key: event_id
      rates:
        pattern: "rates_*.parquet"
"""


@pytest.fixture
def landing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    configure_dlt()
    folder = tmp_path / "landing"
    folder.mkdir()
    (tmp_path / "sources.yml").write_text(SOURCES_YML.format(landing=folder))
    monkeypatch.setenv("DUSK_SOURCES_FILE", str(tmp_path / "sources.yml"))
    return folder


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)


def spec() -> SourceSpec:
    return sources()["drops"]


def types(settings: Settings, table: str) -> dict[str, str]:
    rows = raw(
        settings,
        "select column_name, data_type from information_schema.columns "
        f"where table_schema = 'raw_drops' and table_name = '{table}' and column_name not like '\\_%' escape '\\'",
    )
    return dict(rows)


def test_columns_are_inferred_exactly_on_first_load(landing: Path, settings: Settings) -> None:
    (landing / "sales_2026-01-01.csv").write_text(
        "sale_id,amount,qty,sold_on,sold_at,paid,note,empty\n"
        "1,100.50,3,2026-01-01,2026-01-01 10:00:00,true,first,\n"
        "2,12345678901234567.89,-2,2026-01-02,2026-01-02T11:30:00Z,false,,\n"
        '3,0.1,0,2026-01-03,2026-01-03 00:00:00,True,"x, y",\n'
    )
    (landing / "events_2026-01-01.jsonl").write_text(
        '{"event_id": "e1", "value": 0.1, "big": 123456789012345678901, "payload": {"a": [1, 2]}}\n'
        '{"event_id": "e2", "value": 2.25, "big": 1, "payload": {"b": null}}\n'
    )
    pq.write_table(
        pa.table({"day": pa.array([1], pa.int32()), "rate": [1.0 / 3], "price": pa.array([Decimal("1.5")])}),
        landing / "rates_2026-01-01.parquet",
    )
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert types(settings, "sales") == {
        "sale_id": "BIGINT",
        "amount": "DECIMAL(19,2)",  # 17 whole digits and 2 places: exact, never a double
        "qty": "BIGINT",
        "sold_on": "DATE",
        "sold_at": "TIMESTAMP WITH TIME ZONE",
        "paid": "BOOLEAN",
        "note": "VARCHAR",
    }  # `empty` holds no value yet: not pinned
    assert raw(settings, "select sale_id, amount, note from raw_drops.sales order by 1") == [
        (1, Decimal("100.50"), "first"),
        (2, Decimal("12345678901234567.89"), None),
        (3, Decimal("0.10"), "x, y"),
    ]
    assert types(settings, "events") == {
        "event_id": "VARCHAR",
        "value": "DECIMAL(18,2)",
        "big": "DECIMAL(21,0)",
        "payload": "JSON",
    }
    assert raw(settings, "select big::text, value from raw_drops.events order by event_id") == [
        ("123456789012345678901", Decimal("0.10")),
        ("1", Decimal("2.25")),
    ]
    assert types(settings, "rates") == {"day": "BIGINT", "rate": "DOUBLE", "price": "DECIMAL(2,1)"}
    assert raw(settings, "select rate from raw_drops.rates") == [(1.0 / 3,)]
    first = "sales: column(s) sale_id bigint, amount decimal(19,2)"
    assert any(first in n and "(first load)" in n for n in result.notes)


@pytest.mark.badinput
def test_pinned_types_hold_new_columns_evolve_and_misfits_are_quarantined(landing: Path, settings: Settings) -> None:
    (landing / "sales_2026-01-01.csv").write_text("sale_id,amount,empty\n1,10.50,\n2,3.25,\n")
    assert ingest(spec(), settings).ok
    (landing / "sales_2026-01-02.csv").write_text(
        "sale_id,amount,empty,channel\n"
        "3,7.5,42,web\n"  # fits: amount 7.50; empty's first value: inferred now
        "4,7.125,1,web\n"  # three places do not fit decimal(18,2): quarantined, not rounded
        "5,abc,2,shop\n"  # not a number: quarantined
        "6,1,3,shop\n"
    )
    second = ingest(spec(), settings)
    assert second.ok, second.error
    assert types(settings, "sales") == {
        "sale_id": "BIGINT",
        "amount": "DECIMAL(18,2)",
        "empty": "BIGINT",
        "channel": "VARCHAR",
    }
    assert raw(settings, "select sale_id, amount, empty, channel from raw_drops.sales order by 1") == [
        (1, Decimal("10.50"), None, None),
        (2, Decimal("3.25"), None, None),
        (3, Decimal("7.50"), 42, "web"),
        (6, Decimal("1.00"), 3, "shop"),
    ]
    reasons = raw(settings, "select line, reason from raw_drops._quarantine order by line")
    assert reasons == [
        (
            3,
            'column amount: "7.125" has more decimal places than its declared type decimal(18,2) holds (it would '
            "be rounded)",
        ),
        (4, 'column amount: "abc" is not a decimal(18,2)'),
    ]
    assert any(
        "sales: column(s) empty bigint, channel text inferred from file sales_2026-01-02.csv" in n for n in second.notes
    )
    # a third run reads the pinned types back from raw's schema: a text value in `empty` is refused
    (landing / "sales_2026-01-03.csv").write_text("sale_id,amount,empty,channel\n7,1.00,seven,web\n8,2.00,8,web\n")
    third = ingest(spec(), settings)
    assert third.ok, third.error
    assert types(settings, "sales")["empty"] == "BIGINT"
    assert raw(settings, "select reason from raw_drops._quarantine where line = 2") == [
        ('column empty: "seven" is not a bigint',)
    ]


@pytest.mark.badinput
def test_a_declared_decimal_in_json_arrives_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON numbers are read as their text, not as floats: 19 significant digits stay 19."""
    configure_dlt()
    folder = tmp_path / "landing"
    folder.mkdir()
    declared = SOURCES_YML.replace(
        '        pattern: "events_*.jsonl"\n        primary_key: event_id\n',
        '        pattern: "events_*.jsonl"\n        primary_key: event_id\n'
        "        columns:\n          event_id: text\n          value: decimal(20,2)\n",
    )
    (tmp_path / "sources.yml").write_text(declared.format(landing=folder))
    monkeypatch.setenv("DUSK_SOURCES_FILE", str(tmp_path / "sources.yml"))
    (folder / "events_1.jsonl").write_text('{"event_id": "e1", "value": 12345678901234567.89}\n')
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)
    assert ingest(spec(), settings).ok
    assert raw(settings, "select value from raw_drops.events") == [(Decimal("12345678901234567.89"),)]


def test_headers_are_named_as_raw_names_them_and_a_missing_key_is_refused(landing: Path, settings: Settings) -> None:
    """Field names become raw's (snake_case) before they are pinned, so a later file with the same
    headers finds them; a file without the key column loads none of its rows."""
    (landing / "sales_1.csv").write_text("sale_id,Unit Price,Sold On\n1,2.50,2026-01-01\n")
    assert ingest(spec(), settings).ok
    (landing / "sales_2.csv").write_text("sale_id,Unit Price,Sold On\n2,3.75,2026-01-02\n")
    second = ingest(spec(), settings)
    assert second.ok, second.error
    assert types(settings, "sales") == {"sale_id": "BIGINT", "unit_price": "DECIMAL(18,2)", "sold_on": "DATE"}
    assert raw(settings, "select sale_id, unit_price from raw_drops.sales order by 1") == [
        (1, Decimal("2.50")),
        (2, Decimal("3.75")),
    ]
    assert not [n for n in second.notes if "inferred" in n]  # nothing new the second time
    (landing / "events_1.jsonl").write_text('{"id": 1, "value": 2}\n')
    keyless = ingest(spec(), settings)
    assert not keyless.ok
    assert "primary key column event_id is empty" in (keyless.error or "")


@pytest.mark.badinput
def test_a_timestamp_finer_than_a_microsecond_is_never_cut_off(landing: Path, settings: Settings) -> None:
    """Every warehouse timestamp holds microseconds, and DuckDB's cast (like Python's and dlt's
    parsers) cuts finer digits off without a word. A column first seen with nanoseconds is
    inferred text (kept as written); a later one in a timestamp column is quarantined with the
    reason, from CSV text and from a Parquet file's nanosecond timestamps alike; zeros below the
    microsecond are no loss."""
    (landing / "sales_2026-01-01.csv").write_text(
        "sale_id,sold_at,logged_at\n"
        "1,2026-01-01 10:00:00.123456000Z,2026-01-01 10:00:00.1\n"
        "2,2026-01-01 10:00:01,2026-01-01 10:00:00.123456789\n"
    )
    moments = [1767261600123456000, 1767261600123456789]  # 2026-01-01 10:00:00.123456, and 789 ns later
    pq.write_table(pa.table({"at": pa.array(moments, pa.timestamp("ns", tz="UTC"))}), landing / "rates_1.parquet")
    first = ingest(spec(), settings)
    assert first.ok, first.error
    assert types(settings, "sales") == {
        "sale_id": "BIGINT",
        "sold_at": "TIMESTAMP WITH TIME ZONE",
        "logged_at": "VARCHAR",
    }
    assert raw(settings, "select sold_at::text, logged_at from raw_drops.sales order by sale_id") == [
        ("2026-01-01 10:00:00.123456+00", "2026-01-01 10:00:00.1"),
        ("2026-01-01 10:00:01+00", "2026-01-01 10:00:00.123456789"),
    ]
    assert types(settings, "rates") == {"at": "TIMESTAMP WITH TIME ZONE"}
    assert raw(settings, 'select "at"::text from raw_drops.rates') == [("2026-01-01 10:00:00.123456+00",)]
    (landing / "sales_2026-01-02.csv").write_text(
        "sale_id,sold_at,logged_at\n3,2026-01-02 00:00:00.0000001,x\n4,2026-01-02 00:00:00.0000010000,y\n"
    )
    second = ingest(spec(), settings)
    assert second.ok, second.error
    finer = "has digits below the microsecond, which a timestamp does not hold (they would be cut off)"
    assert raw(settings, "select source_table, line, reason from raw_drops._quarantine order by all") == [
        (
            "rates",
            2,
            f'column at: "2026-01-01 10:00:00.123456789Z" {finer}; declare the column text to keep it as written',
        ),
        (
            "sales",
            2,
            f'column sold_at: "2026-01-02 00:00:00.0000001" {finer}; declare the column text to keep it as written',
        ),
    ]
    assert raw(settings, "select sale_id, sold_at::text from raw_drops.sales where sale_id > 2") == [
        (4, "2026-01-02 00:00:00.000001+00")
    ]
