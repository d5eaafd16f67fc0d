"""The type zoo: every source type, with extreme values, on real PostgreSQL and MariaDB servers
(own database per test) and on SQLite. After a load, every value in raw equals the source's value,
compared as text in the source's own formatting (the server renders its value, the test renders
raw's the same way); a value raw's type cannot hold stops the table naming column, key and fix;
and each kind of schema change is applied when safe and stops the table when not."""

from __future__ import annotations

import contextlib
import sqlite3
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dusk.settings import Settings
from ingestion.declaration import SourceSpec, load_sources
from ingestion.dlt_settings import configure_dlt
from ingestion.result import SourceResult
from ingestion.run import make_pipeline
from tests.helpers import ingest, raw, target

PG_ZOO = """
create type mood as enum ('sad', 'ok', 'happy');
create schema sales;
create table sales.zoo (
  id integer primary key, updated_at timestamp not null,
  n_small smallint, n_int integer, n_big bigint,
  d_10_2 numeric(10,2), d_free numeric, d_50_10 numeric(50,10), d_38_0 numeric(38,0),
  f_real real, f_double double precision, m money,
  b boolean, t text, vc varchar(10), by bytea,
  dt date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
  u uuid, j json, jb jsonb, arr_i int[], arr_t text[], arr_n numeric[], e mood, bt bit(4), vb varbit(8),
  ip inet, mac macaddr
);
insert into sales.zoo values
 (1, '2026-01-01', 32767, 2147483647, 9223372036854775807, 12345678.91,
  12345678901234567890.1234567890123456789012, 1234567890123456789012345678901234567890.1234567890,
  99999999999999999999999999999999999999, 3.4028235e38, 1.7976931348623157e308, '92233720368547758.07',
  true, E'h\u00e9llo \U0001f600 w\u00f6rld', 'ten chars!', '\\x00ff10',
  '2024-02-29', '23:59:59.999999', '12:00:00+05:30', '1969-07-20 20:17:40.123456',
  '9999-12-31 23:59:59.999999+00', '1 year 2 mons 3 days 04:05:06.789',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.5, "x"], "b": null}', '{"k": {"n": 1}}',
  '{1,2,NULL}', '{"a b","c,d",NULL}', '{1.000000000000000000000000000000000000000001}', 'happy', B'1010', B'101',
  '::1', '08:00:2b:01:02:03'),
 (2, '2026-01-01', -32768, -2147483648, -9223372036854775808, -0.01, 'NaN', -0.0000000001, 0,
  'NaN', '-Infinity', '-1.00', false, '', '', '',
  '0001-01-01', '00:00:00', '00:00:00-12', '2026-03-29 01:30:00', '2026-03-29 01:30:00+01', '-1 days',
  '00000000-0000-0000-0000-000000000000', 'null', '[]', '{}', '{}', '{}', 'sad', B'0000', B'',
  '192.168.0.1/24', '00:00:00:00:00:00'),
 (3, '2026-01-01', null, null, null, null, 'Infinity', null, null, 'Infinity', 'NaN', null,
  null, repeat('x', 100000), null, null, null, null, null, null, null, null,
  null, null, null, null, null, null, null, null, null, null, null)
"""

MY_ZOO = """
create table zoo (
  id int primary key, updated_at datetime(6) not null,
  n_tiny tinyint, n_bool tinyint(1), n_tiny_u tinyint unsigned, n_small smallint, n_med mediumint,
  n_int int, n_int_u int unsigned, n_big bigint, n_big_u bigint unsigned,
  d_10_2 decimal(10,2), d_65_10 decimal(65,10), d_38_0 decimal(38,0), d_u decimal(10,2) unsigned,
  f_float float, f_double double, bt bit(4), b1 bit(1),
  ch char(3), vc varchar(10), t text, lt longtext, bl blob, bin binary(4), vbin varbinary(8),
  dt date, dtm datetime, dtm6 datetime(6), tsp timestamp null, tm time, tm6 time(6), yr year,
  e enum('sad','ok','happy'), st set('a','b','c'), j json
);
insert into zoo values
 (1, '2026-01-01', 127, 2, 255, 32767, 8388607, 2147483647, 4294967295, 9223372036854775807,
  18446744073709551615, 12345678.91, 1234567890123456789012345678901234567890123456789012345.1234567890,
  99999999999999999999999999999999999999, 99999999.99, 3.40282e38, 1.7976931348623157e308, b'1010', b'1',
  'ab', 'ten chars!', 'h\u00e9llo \U0001f600 w\u00f6rld', repeat('x', 100000), x'00ff10', x'00010203', x'',
  '2024-02-29', '1000-01-01 00:00:00', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07', '838:59:59',
  '-12:34:56.789012', 2155, 'happy', 'a,c', '{"a": [1, 2.5, "x"], "b": null}'),
 (2, '2026-01-01', -128, 0, 0, -32768, -8388608, -2147483648, 0, -9223372036854775808, 0,
  -0.01, -0.0000000001, 0, 0, -1.5, -2.5e-308, b'0000', b'0',
  '', '', '', concat('nul', char(0), 'byte'), '', x'00000000', x'00',
  '1970-01-01', '2024-03-31 02:30:00', '2024-10-27 02:30:00.5', '1970-01-01 00:00:01', '00:00:00', '00:00:00',
  1901, 'sad', '', '[]'),
 (3, '2026-01-01', null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
  null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null)
"""


def write_sources(path: Path, extra: str = "", schema: str = "") -> SourceSpec:
    path.write_text(
        "sources:\n  zoo:\n    kind: database\n    tables:\n      zoo:\n"
        "        primary_key: id\n        cursor: updated_at\n        deletes: key_diff\n"
        + (f"        schema: {schema}\n" if schema else "")
        + extra
    )
    return load_sources(path)["zoo"]


@pytest.fixture
def zoo(shop_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, sa.Engine]]:
    """An empty database on each real server and a workspace whose sources.yml lists ``zoo``."""
    configure_dlt()
    monkeypatch.setenv("SOURCES__ZOO__CREDENTIALS", shop_url)
    engine = sa.create_engine(shop_url)
    yield Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "t", demo=False, demo_seed=1), engine
    engine.dispose()


def run_script(engine: sa.Engine, script: str) -> None:
    with engine.begin() as con:
        if engine.dialect.name != "postgresql":
            con.exec_driver_sql("set session sql_mode = ''")
        for statement in script.split(";\n"):
            if statement.strip():
                con.exec_driver_sql(statement)


def source_texts(engine: sa.Engine, table: str, columns: list[str]) -> dict[int, dict[str, str | None]]:
    """Every value as the server writes it (its output function), keyed by id."""
    pg = engine.dialect.name == "postgresql"
    with engine.connect() as con:
        if pg:
            con.exec_driver_sql("set timezone = 'UTC'; set extra_float_digits = 1; set datestyle = 'ISO'")
            types = dict(
                con.exec_driver_sql(
                    f"select column_name, data_type from information_schema.columns "
                    f"where table_name = '{table.split('.')[-1]}'"
                ).fetchall()
            )
            # money's text follows lc_monetary ('$1.00'); raw holds its numeric
            items = ", ".join(
                f'"{c}"::numeric::text'
                if types[c] == "money"
                else f'to_json("{c}")::text'
                if types[c] == "ARRAY"  # arrays land as JSON
                else f'case when "{c}" is not null then format(\'%%s\', "{c}") end'  # '%%': the driver's '%'
                for c in columns
            )
        else:
            con.exec_driver_sql("set time_zone = '+00:00'")
            types = dict(
                con.exec_driver_sql(
                    f"select column_name, data_type from information_schema.columns "
                    f"where table_schema = database() and table_name = '{table}'"
                ).fetchall()
            )
            items = ", ".join(
                f"hex(`{c}`)"
                if types[c] in ("blob", "binary", "varbinary")
                else f"bin(`{c}`)"
                if types[c] == "bit"
                else f"cast(`{c}` as char)"
                for c in columns
            )
        rows = con.exec_driver_sql(f"select id, {items} from {table} order by id").fetchall()
    return {r[0]: dict(zip(columns, r[1:], strict=True)) for r in rows}


def pg_text(value: Any, source_type: str) -> str | None:
    """Raw's value as PostgreSQL writes the source type."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        special = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(repr(value))
        if special or source_type != "real":
            return special or repr(value)
        return _shortest_float4(value)  # raw's double holds the float4 exactly: PostgreSQL's shortest text of it
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0").rstrip(".")
        return text + ("+00" if source_type.startswith("timestamp with time") else "")
    if isinstance(value, date | time):
        text = value.isoformat()
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def _shortest_float4(value: float) -> str:
    (f,) = struct.unpack("f", struct.pack("f", value))
    for digits in range(1, 10):
        text = f"{f:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == f:
            break
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent):+03d}" if exponent else text


def my_text(value: Any, source_type: str) -> str | None:
    """Raw's value as MySQL writes the source type (blobs as hex, bits as binary digits)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, bytes):
        return value.hex().upper()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        if source_type.startswith("float"):
            return _shortest_float4(value).replace("e+", "e").replace("e-0", "e-").replace("e0", "e")
        return repr(value).replace("e+", "e")
    if isinstance(value, datetime):
        fraction = "%f" if "(6)" in source_type else ""
        return value.strftime("%Y-%m-%d %H:%M:%S" + (f".{fraction}" if fraction else ""))
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def assert_raw_equals_source(
    settings: Settings, engine: sa.Engine, table: str, source_table: str, skip: set[str] | None = None
) -> None:
    """Every live row's every value in raw equals the source's, as the source writes it (columns
    in ``skip``, e.g. excluded ones, are left out)."""
    pg = engine.dialect.name == "postgresql"
    pipeline = make_pipeline(load_sources(settings.data_dir / "sources.yml")["zoo"], target(settings))
    hints = pipeline.default_schema.tables[table]["columns"]
    columns = [c for c in hints if not c.startswith("_") and c not in (skip or set())]
    source = source_texts(engine, source_table, columns)
    names = ", ".join(f'"{c}"' for c in columns)
    rows = raw(settings, f"select id, {names} from raw_zoo.{table} where not _is_deleted order by id")
    assert [r[0] for r in rows] == sorted(source)
    render = pg_text if pg else my_text
    for row in rows:
        for column, value in zip(columns, row[1:], strict=True):
            source_type = str(hints[column].get("x-source-type", "")).removesuffix(" not null")
            if not pg and source_type.startswith("bit") and value is not None:
                # bin() drops leading zeros; bit(1) lands as a boolean
                got = ("1" if value else "0") if isinstance(value, bool) else bin(int(value, 2))[2:]
            else:
                got = render(value, source_type)
            if source_type == "money" and got is not None:
                got = format(Decimal(got).normalize(), "f")
                source[row[0]][column] = format(Decimal(str(source[row[0]][column])).normalize(), "f")
            assert got == source[row[0]][column], (row[0], column, source_type, value)


def load_zoo(
    settings: Settings, engine: sa.Engine, path: Path, script: str, schema: str = ""
) -> tuple[SourceResult, dict[str, str]]:
    """Create the zoo at the source, load it, check every value against the source; return the
    result and raw's column types."""
    run_script(engine, script)
    result = ingest(write_sources(path, schema=schema), settings)
    assert result.ok, result.error
    assert_raw_equals_source(settings, engine, "zoo", f"{schema}.zoo" if schema else "zoo")
    query = (
        "select column_name, data_type from information_schema.columns "
        "where table_schema = 'raw_zoo' and table_name = 'zoo'"
    )
    return result, dict(raw(settings, query))


@pytest.mark.parametrize("shop_url", ["postgres"], indirect=True)
def test_every_postgres_type_lands_exactly(zoo, tmp_path: Path) -> None:
    settings, engine = zoo
    result, types = load_zoo(settings, engine, tmp_path / "sources.yml", PG_ZOO, schema="sales")
    assert (types["d_10_2"], types["d_free"], types["d_50_10"], types["m"]) == (
        "DECIMAL(10,2)",
        "VARCHAR",
        "VARCHAR",
        "DECIMAL(38,4)",
    )
    assert (types["j"], types["jb"], types["arr_i"], types["arr_n"]) == ("JSON", "JSON", "JSON", "JSON")
    assert types["n_small"] == "SMALLINT" and types["tstz"] == "TIMESTAMP WITH TIME ZONE"
    assert any("d_free (numeric): numeric without precision" in n for n in result.notes), result.notes


@pytest.mark.badinput
@pytest.mark.parametrize("shop_url", ["postgres"], indirect=True)
def test_postgres_values_raw_cannot_hold_stop_the_table_and_text_keeps_them(zoo, tmp_path: Path) -> None:
    """NaN in a numeric(p,s) and infinite dates and timestamps would become 0 or a clamped date:
    the table stops, naming them; declared as text, they land as the server writes them."""
    settings, engine = zoo
    run_script(
        engine,
        "create table zoo (id int primary key, updated_at timestamp not null, amount numeric(10,2), day date, "
        "at timestamptz);\n"
        "insert into zoo values (1, '2026-01-01', 'NaN', '2026-01-01', now()), "
        "(2, '2026-01-01', 1.5, 'infinity', '-infinity'), (3, '2026-01-01', 2.25, '2026-01-02', now())",
    )
    spec = write_sources(tmp_path / "sources.yml")
    result = ingest(spec, settings)
    assert not result.ok
    assert result.error is not None
    for part in (
        "table 'zoo'",
        "column 'amount' (numeric(10, 2) -> raw DECIMAL(10, 2)) at id=1: 'NaN'",
        "column 'day' (date -> raw DATE) at id=2: 'infinity'",
        "column 'at'",
        "columns: {<column>: text}",
    ):
        assert part in result.error
    assert raw(
        settings, "select count(*) from information_schema.tables where table_schema = 'raw_zoo' and table_name = 'zoo'"
    ) == [(0,)]
    spec = write_sources(tmp_path / "sources.yml", "        columns: {amount: text, day: text, at: text}\n")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert raw(settings, "select id, amount, day from raw_zoo.zoo order by id") == [
        (1, "NaN", "2026-01-01"),
        (2, "1.50", "infinity"),
        (3, "2.25", "2026-01-02"),
    ]


class _CopyAfter:
    """dusk's DuckDB connection to the source, whose COPY of the rows waits for ``event``."""

    def __init__(self, con: Any, event: threading.Event) -> None:
        self._con, self._event = con, event

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("COPY ("):
            assert self._event.wait(60), "the check never finished"
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


@pytest.mark.parametrize("shop_url", ["postgres"], indirect=True)
def test_a_value_changed_between_the_check_and_the_copy_cannot_reach_raw_unchecked(
    zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check for values raw cannot hold and the copy read the same rows side by side. A row
    set to NaN after the check read it and before the copy did would be copied as 0.00 (the
    scanner's reading of NaN) and never looked at again: the two read one snapshot."""
    from ingestion.database import extract

    settings, engine = zoo
    run_script(
        engine,
        "create table zoo (id int primary key, updated_at timestamp not null, amount numeric(10,2));\n"
        "insert into zoo values (1, '2026-01-01', 1.50), (2, '2026-01-01', 2.25)",
    )
    spec = write_sources(tmp_path / "sources.yml")
    checked = threading.Event()
    real_check, real_attach = extract.refuse_inexact_values, extract.attach

    def check_then_change(*args: Any) -> None:
        try:
            real_check(*args)
        finally:
            run_script(engine, "update zoo set amount = 'NaN', updated_at = '2026-01-02' where id = 2")
            checked.set()

    @contextlib.contextmanager
    def attach_holding_the_copy(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real_attach(*args, **kwargs) as con:
            yield _CopyAfter(con, checked)

    monkeypatch.setattr(extract, "refuse_inexact_values", check_then_change)
    monkeypatch.setattr(extract, "attach", attach_holding_the_copy)
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert checked.is_set()
    # the row as the check saw it, not the NaN committed before the copy began
    assert raw(settings, "select id, amount from raw_zoo.zoo order by id") == [
        (1, Decimal("1.50")),
        (2, Decimal("2.25")),
    ]
    monkeypatch.undo()
    monkeypatch.setenv("SOURCES__ZOO__CREDENTIALS", engine.url.render_as_string(hide_password=False))
    result = ingest(spec, settings)  # the next night reads the changed row, and stops on it
    assert not result.ok
    assert "column 'amount' (numeric(10, 2) -> raw DECIMAL(10, 2)) at id=2: 'NaN'" in (result.error or "")


@pytest.mark.parametrize("shop_url", ["mariadb"], indirect=True)
def test_every_mariadb_type_lands_exactly(zoo, tmp_path: Path) -> None:
    settings, engine = zoo
    _, types = load_zoo(settings, engine, tmp_path / "sources.yml", MY_ZOO)
    assert (types["n_bool"], types["n_int_u"], types["n_big_u"], types["d_65_10"]) == (
        "TINYINT",
        "BIGINT",
        "DECIMAL(20,0)",
        "VARCHAR",
    )
    assert raw(settings, "select n_bool from raw_zoo.zoo where id = 1") == [(2,)]  # tinyint(1) is no boolean
    assert types["j"] == "JSON"  # MariaDB's JSON is a LONGTEXT with a json_valid check


@pytest.mark.badinput
@pytest.mark.parametrize("shop_url", ["mariadb"], indirect=True)
def test_mariadb_zero_dates_stop_the_table_and_text_keeps_them(zoo, tmp_path: Path) -> None:
    settings, engine = zoo
    run_script(
        engine,
        "create table zoo (id int primary key, updated_at datetime not null, born date, seen datetime);\n"
        "insert into zoo values (1, '2026-01-01', '0000-00-00', '2026-01-01 10:00:00'), "
        "(2, '2026-01-01', '2024-02-29', '2024-05-00 00:00:00'), (3, '2026-01-01', '2024-02-29', null)",
    )
    spec = write_sources(tmp_path / "sources.yml")
    result = ingest(spec, settings)
    assert not result.ok and result.error is not None
    assert "column 'born' (date -> raw DATE) at id=1: '0000-00-00'" in result.error
    assert "column 'seen' (datetime -> raw TIMESTAMPTZ) at id=2: '2024-05-00 00:00:00'" in result.error
    spec = write_sources(tmp_path / "sources.yml", "        columns: {born: text, seen: text}\n")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert raw(settings, "select id, born, seen from raw_zoo.zoo order by id") == [
        (1, "0000-00-00", "2026-01-01 10:00:00"),
        (2, "2024-02-29", "2024-05-00 00:00:00"),
        (3, "2024-02-29", None),
    ]


@pytest.mark.badinput
def test_sqlite_values_of_another_storage_class_stop_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite lets any column hold any value: a text in an integer column, a float with more
    digits than a numeric(10,2), a 2 in a boolean, a timestamp's text with nanoseconds are named,
    never cast into something else (zeros below the microsecond are no loss)."""
    configure_dlt()
    db = tmp_path / "src.sqlite"
    with sqlite3.connect(db) as con:
        con.execute(
            "create table zoo (id integer primary key, updated_at timestamp not null, n integer, "
            "amount numeric(10,2), flag boolean, seen_at timestamp)"
        )
        con.execute(
            "insert into zoo values (1, '2026-01-01 00:00:00', 5, 1.25, 1, '2026-01-02 03:04:05.123456000'), "
            "(2, '2026-01-01 00:00:00', 'abc', 12.345, 2, '2026-01-02 03:04:05.123456789'), "
            "(3, '2026-01-01 00:00:00', 7, 3.5, 0, null)"
        )
    monkeypatch.setenv("SOURCES__ZOO__CREDENTIALS", f"sqlite:///{db}")
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "t", demo=False, demo_seed=1)
    result = ingest(write_sources(tmp_path / "sources.yml"), settings)
    assert not result.ok and result.error is not None
    for column in ("'n'", "'amount'", "'flag'", "'seen_at'"):
        assert f"column {column}" in result.error and "at id=2" in result.error
    with sqlite3.connect(db) as con:
        con.execute("update zoo set n = 6, amount = 12.35, flag = 1, seen_at = '2026-01-02 03:04:05.1234' where id = 2")
    result = ingest(write_sources(tmp_path / "sources.yml"), settings)
    assert result.ok, result.error
    assert raw(settings, "select id, n, amount, flag, seen_at from raw_zoo.zoo order by id") == [
        (1, 5, Decimal("1.25"), True, datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        (2, 6, Decimal("12.35"), True, datetime(2026, 1, 2, 3, 4, 5, 123400, tzinfo=UTC)),
        (3, 7, Decimal("3.50"), False, None),
    ]


@pytest.mark.badinput
def test_schema_changes_widen_raw_when_safe_and_stop_the_table_when_not(zoo, tmp_path: Path) -> None:
    """integer -> bigint and numeric(10,2) -> numeric(12,4) widen raw (and are recorded), so a
    value only the new types hold arrives exact; varchar growth and a dropped NOT NULL are
    recorded; a narrowing stops the table, names both types, and leaves raw and the cursor."""
    settings, engine = zoo
    pg = engine.dialect.name == "postgresql"
    run_script(
        engine,
        "create table zoo (id int primary key, updated_at timestamp not null, n integer, amount numeric(10,2), "
        "label varchar(10) not null);\n"
        "insert into zoo values (1, '2026-01-01', 1, 1.25, 'a')",
    )
    spec = write_sources(tmp_path / "sources.yml")
    assert ingest(spec, settings).ok

    def alter(column: str, to: str) -> str:
        return f"alter table zoo alter column {column} type {to}" if pg else f"alter table zoo modify {column} {to}"

    run_script(
        engine,
        f"{alter('n', 'bigint')};\n{alter('amount', 'numeric(12,4)')};\n{alter('label', 'varchar(20)')};\n"
        + ("alter table zoo alter column label drop not null;\n" if pg else "")
        + "insert into zoo values (2, '2026-01-02', 9223372036854775807, 12345678.1234, 'twenty characters!!')",
    )
    result = ingest(spec, settings)
    assert result.ok, result.error
    changes = "; ".join(result.schema_changes)
    assert "zoo.n: widened integer -> bigint" in changes
    assert "zoo.amount: widened decimal(10,2) -> decimal(12,4)" in changes
    assert "zoo.label: source type changed varchar(10) not null -> varchar(20)" in changes
    assert raw(settings, "select id, n, amount, label from raw_zoo.zoo order by id") == [
        (1, 1, Decimal("1.2500"), "a"),
        (2, 9223372036854775807, Decimal("12345678.1234"), "twenty characters!!"),
    ]
    assert ingest(spec, settings).schema_changes == []  # recorded once

    run_script(
        engine,
        "delete from zoo where id = 2;\n"
        + alter("amount", "numeric(6,1)")
        + ";\nupdate zoo set updated_at = '2026-02-01', amount = 1.5",
    )
    state = make_pipeline(spec, target(settings)).state["sources"]
    result = ingest(spec, settings)
    assert not result.ok and result.error is not None
    assert "column 'amount' changed type in the source from " in result.error
    assert "(12, 4) to " in result.error and "(6, 1); raw holds decimal(12,4)" in result.error
    assert "not a safe widening" in result.error and "columns: {amount: text}" in result.error
    assert make_pipeline(spec, target(settings)).state["sources"] == state
    assert raw(settings, "select amount from raw_zoo.zoo order by id") == [
        (Decimal("1.2500"),),
        (Decimal("12345678.1234"),),
    ]


@pytest.mark.badinput
@pytest.mark.parametrize("shop_url", ["postgres"], indirect=True)
def test_a_declared_decimal_is_checked_at_the_source(zoo, tmp_path: Path) -> None:
    """``columns: {c: decimal(p,s)}`` on a numeric without precision: a value the decimal would
    round or overflow stops the table; values that fit land as that decimal. A declared column the
    source lacks is named."""
    settings, engine = zoo
    run_script(
        engine,
        "create table zoo (id int primary key, updated_at timestamp not null, amount numeric);\n"
        "insert into zoo values (1, '2026-01-01', 1.25), (2, '2026-01-01', 1.255), (3, '2026-01-01', 123456789)",
    )
    spec = write_sources(tmp_path / "sources.yml", '        columns: {amount: "decimal(10,2)"}\n')
    result = ingest(spec, settings)
    assert not result.ok and result.error is not None
    assert "column 'amount' (numeric -> raw DECIMAL(10, 2)) at id=2: '1.255'; id=3: '123456789'" in result.error
    run_script(engine, "update zoo set amount = 1.26 where id = 2;\nupdate zoo set amount = 12345678.9 where id = 3")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert raw(settings, "select id, amount from raw_zoo.zoo order by id") == [
        (1, Decimal("1.25")),
        (2, Decimal("1.26")),
        (3, Decimal("12345678.90")),
    ]
    spec = write_sources(tmp_path / "sources.yml", '        columns: {amount: "decimal(10,2)", price: text}\n')
    result = ingest(spec, settings)
    assert not result.ok and result.error is not None
    assert "table 'zoo': columns ['price'] are declared (columns:) in sources.yml but not in the source" in result.error


@pytest.mark.parametrize("shop_url", ["postgres", "mariadb"], indirect=True)
def test_a_deleted_row_keeps_raw_types(zoo, tmp_path: Path) -> None:
    """Key-diff merges a deleted row back from raw: its JSON columns (text in Arrow) must not
    retype raw's columns in dlt's schema (the next night then stopped: 'raw holds text')."""
    settings, engine = zoo
    pg = engine.dialect.name == "postgresql"
    table = "sales.zoo" if pg else "zoo"
    load_zoo(settings, engine, tmp_path / "sources.yml", PG_ZOO if pg else MY_ZOO, schema="sales" if pg else "")
    spec = write_sources(tmp_path / "sources.yml", schema="sales" if pg else "")
    run_script(engine, f"delete from {table} where id = 3")
    deleted = ingest(spec, settings)
    assert deleted.ok and {t.table: t.deleted for t in deleted.tables} == {"zoo": 1}, deleted.error
    run_script(engine, f"update {table} set updated_at = '2026-03-01' where id = 1")
    again = ingest(spec, settings)
    assert again.ok, again.error
    assert_raw_equals_source(settings, engine, "zoo", table)


@pytest.mark.parametrize("shop_url", ["postgres"], indirect=True)
def test_a_server_time_zone_other_than_utc_shifts_nothing(zoo, tmp_path: Path) -> None:
    """Every session on the source database defaults to Asia/Kolkata (+05:30) and the server's
    DateStyle to a non-ISO one: timestamps with and without time zone, dates, times and the
    text-read columns still land as the values they are (compared in UTC, the test's session)."""
    settings, engine = zoo
    with engine.begin() as con:
        con.exec_driver_sql(
            f"alter database {engine.url.database} set timezone to 'Asia/Kolkata'; "
            f"alter database {engine.url.database} set datestyle to 'SQL, DMY'"
        )
    engine.dispose()  # new sessions take the database's settings
    with engine.connect() as con:
        assert con.exec_driver_sql("show timezone").scalar() == "Asia/Kolkata"
    _, types = load_zoo(settings, engine, tmp_path / "sources.yml", PG_ZOO, schema="sales")
    assert types["tstz"] == "TIMESTAMP WITH TIME ZONE"
    assert raw(settings, "select cast(tstz as varchar), cast(ts as varchar) from raw_zoo.zoo where id = 2") == [
        ("2026-03-29 00:30:00+00", "2026-03-29 01:30:00+00")
    ]
    # columns read as the server's text: its DateStyle and TimeZone are pinned for dusk's sessions
    run_script(
        engine,
        "alter table sales.zoo add column span daterange, add column stamps timestamptz[];\n"
        "update sales.zoo set updated_at = '2026-04-01', span = '[2026-01-31,2026-02-28)', "
        "stamps = '{2026-01-31 23:00:00+00}' where id = 1",
    )
    assert ingest(write_sources(tmp_path / "sources.yml", schema="sales"), settings).ok
    assert raw(settings, "select span, cast(stamps as varchar) from raw_zoo.zoo where id = 1") == [
        ("[2026-01-31,2026-02-28)", '["2026-01-31T23:00:00+00:00"]')
    ]
