"""PostgreSQL log-based CDC (pgoutput slot + publication), against a real server with
wal_level=logical and a database of its own per test: inserts, updates and deletes arrive in raw
with their commit LSN and time, a TRUNCATE deletes, the position moves only with the data, and a
process killed at any instant loses and repeats nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from dusk.settings import Settings
from ingestion.database import cdc, database_source, plan_source
from ingestion.database.types import SourceColumn
from ingestion.declaration import SourceSpec, TableSpec, load_sources
from ingestion.dlt_settings import configure_dlt
from ingestion.result import SourceResult
from ingestion.run import make_pipeline
from tests.helpers import ingest, kill_ingest_after, on_engine, raw, sources, sql, target

SOURCES_YML = """
sources:
  crm:
    kind: database
    description: a CRM on PostgreSQL, captured from its write-ahead log
    tables:
      accounts:
        primary_key: account_id
        deletes: cdc
      notes:
        primary_key: note_id
        deletes: cdc
      kinds:
        primary_key: id
        deletes: cdc
"""

SCHEMA = (
    "create table accounts (account_id bigint primary key, name text not null, balance numeric(12, 2), "
    "active boolean, opened_on date, touched_at timestamptz, naive_at timestamp, blob bytea)",
    "create table notes (note_id int primary key, account_id bigint, body text)",
    "insert into accounts select g, 'account ' || g, g * 1.5, g % 2 = 0, date '2026-01-01' + g, "
    "timestamptz '2026-01-01 00:00:00+00' + g * interval '1 hour', timestamp '2026-01-01' + g * interval '1 day', "
    "decode('0a0b', 'hex') from generate_series(1, 50) g",
    "insert into notes select g, g, repeat('x', 5) from generate_series(1, 20) g",
    "create table kinds (id int primary key, u uuid, tags int[], span interval, doc jsonb, ratio float8, "
    "at_time time, price numeric(30, 10), flag boolean, day date, ts timestamp(3), cash money, "
    "exact numeric[], words text[], flags boolean[], floats float8[], grid int[][])",
    "insert into kinds values (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,2,3}', '1 day 02:03:04', "
    """'{"a": [1, "x y"]}', 0.1, '12:34:56.789', 12345678901234567890.0123456789, true, '2026-02-28', """
    "'2026-03-01 04:05:06.789', '-92233720368547758.08', "
    "'{1.000000000000000000000000000000000000000001,NaN,NULL,-Infinity}', "
    """'{"a b","c,d",NULL,"NULL","q\\"x","back\\\\slash","é😀",plain}', '{t,f,NULL}', """
    "'{0.1,1.5e300,NaN,-Infinity}', '{{1,2},{3,NULL}}')",
)


@pytest.fixture
def crm(
    logical_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[Settings, SourceSpec, sa.Engine]]:
    """The CRM on a server with logical WAL, and a warehouse: a DuckDB file, or (``postgres``, as
    an indirect parameter) a PostgreSQL database of the test's own, dropped afterwards."""
    configure_dlt()
    declared = tmp_path / "sources.yml"
    declared.write_text(SOURCES_YML)
    monkeypatch.setenv("DUSK_SOURCES_FILE", str(declared))
    monkeypatch.setenv("SOURCES__CRM__CREDENTIALS", logical_pg_url)
    engine = sa.create_engine(logical_pg_url)
    sql(engine, *SCHEMA)
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)
    try:
        with on_engine(settings, getattr(request, "param", "duckdb")) as settings:
            yield settings, sources()["crm"], engine
    finally:
        engine.dispose()


def source_rows(engine: sa.Engine, table: str, key: str) -> list[tuple]:
    with engine.connect() as con:
        return [tuple(r) for r in con.execute(sa.text(f"select * from {table} order by {key}"))]


def live(settings: Settings, table: str, key: str, columns: str = "*") -> list[tuple]:
    return raw(settings, f"select {columns} from raw_crm.{table} where not _is_deleted order by {key}")


def stats(result: SourceResult) -> dict[str, tuple[int, int]]:
    return {t.table: (t.extracted, t.deleted) for t in result.tables}


ACCOUNT_COLUMNS = "account_id, name, balance, active, opened_on, touched_at, naive_at, blob"


def assert_raw_equals_source(settings: Settings, engine: sa.Engine) -> None:
    got = live(settings, "accounts", "account_id", ACCOUNT_COLUMNS)
    want = source_rows(engine, "accounts", "account_id")
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        # naive source timestamps land as UTC timestamptz; bytea as blob
        w = (*w[:6], w[6] and w[6].replace(tzinfo=UTC), w[7] and bytes(w[7]))
        assert g == w
    assert live(settings, "notes", "note_id", "note_id, account_id, body") == source_rows(engine, "notes", "note_id")


def test_setup_is_required_and_idempotent(crm) -> None:
    settings, spec, engine = crm
    result = ingest(spec, settings)
    assert not result.ok
    assert "replication slot 'dusk_crm' does not exist" in (result.error or "")
    assert "dusk cdc setup crm" in (result.error or "")
    first = cdc.setup(engine.url, spec)
    assert first[-1] == "replication slot dusk_crm created (pgoutput)"
    again = cdc.setup(engine.url, spec)
    assert again[0] == "publication dusk_crm: accounts, notes, kinds"
    assert again[-1].startswith("replication slot dusk_crm exists")


@pytest.mark.parametrize("crm", ["duckdb", "postgres"], indirect=True)
def test_inserts_updates_and_deletes_arrive_with_their_commit_lsn_and_time(crm) -> None:
    settings, spec, engine = crm
    cdc.setup(engine.url, spec)
    first = ingest(spec, settings)
    assert first.ok, first.error
    assert stats(first) == {"accounts": (50, 0), "notes": (20, 0), "kinds": (1, 0)}
    assert_raw_equals_source(settings, engine)
    assert raw(settings, "select count(*) from raw_crm.accounts where _source_lsn is null") == [(50,)]

    before = datetime.now(UTC)
    sql(
        engine,
        "insert into accounts (account_id, name, balance) values (51, 'new', 10.00)",
        "update accounts set balance = 99.99, active = null where account_id = 2",
        "update accounts set name = 'twice' where account_id = 2",
        "delete from accounts where account_id = 3",
        "insert into accounts (account_id, name) values (52, 'short-lived')",
        "delete from accounts where account_id = 52",
        "update accounts set account_id = 1004 where account_id = 4",  # a key change: 4 deleted, 1004 new
    )
    sql(engine, "update notes set body = 'edited' where note_id = 1", "delete from notes where note_id = 2")
    result = ingest(spec, settings)
    assert result.ok, result.error
    # accounts: 51, 2 and 1004 live; 3, 52 and 4 deleted
    assert stats(result) == {"accounts": (3, 3), "notes": (1, 1), "kinds": (0, 0)}
    assert_raw_equals_source(settings, engine)
    deleted = raw(
        settings,
        "select account_id, name, balance, _deleted_at, _source_lsn, _source_committed_at = _deleted_at "
        "from raw_crm.accounts where _is_deleted order by 1",
    )
    assert [(r[0], r[1], r[2]) for r in deleted] == [
        (3, "account 3", Decimal("4.50")),  # the last values raw held
        (4, "account 4", Decimal("6.00")),
        (52, "short-lived", None),  # its values from the insert in the same batch
    ]
    assert all(r[3] >= before and r[4] > 0 and r[5] for r in deleted)
    changed = raw(settings, "select _source_lsn, _source_committed_at from raw_crm.accounts where account_id = 2")
    assert changed[0][0] > 0 and changed[0][1] >= before
    # the position was stored with the data: a quiet run reads nothing
    quiet = ingest(spec, settings)
    assert quiet.ok, quiet.error
    assert stats(quiet) == {"accounts": (0, 0), "notes": (0, 0), "kinds": (0, 0)}


def test_a_table_with_replica_identity_full_arrives_as_the_source_holds_it(crm) -> None:
    """REPLICA IDENTITY FULL sends each update's whole old row, so its updates are decoded message
    by message, not in bulk: a changed value, a changed key and a delete all reach raw."""
    settings, spec, engine = crm
    sql(engine, "alter table notes replica identity full")
    cdc.setup(engine.url, spec)
    first = ingest(spec, settings)
    assert first.ok, first.error
    sql(
        engine,
        "update notes set body = 'whole old row sent' where note_id = 1",
        "update notes set note_id = 1003 where note_id = 3",  # a key change: 3 deleted, 1003 new
        "delete from notes where note_id = 2",
    )
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert stats(result)["notes"] == (2, 2)
    assert_raw_equals_source(settings, engine)


def test_a_key_back_after_a_deletion_is_stamped_with_its_commit_time(crm) -> None:
    """Raw holds account 3 as deleted; a later batch inserts it again: _restored_at = the insert's
    commit time, so staging versions the return. A key deleted and inserted again within one batch
    never looked deleted to raw: no stamp."""
    settings, spec, engine = crm
    cdc.setup(engine.url, spec)
    assert ingest(spec, settings).ok
    sql(engine, "delete from accounts where account_id in (3, 4)")
    assert ingest(spec, settings).ok
    sql(
        engine,
        "insert into accounts (account_id, name) values (3, 'back')",
        "delete from accounts where account_id = 5",
        "insert into accounts (account_id, name) values (5, 'again')",
    )
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert stats(result)["accounts"] == (2, 0)
    rows = raw(
        settings,
        "select account_id, _is_deleted, _restored_at = _source_committed_at from raw_crm.accounts "
        "where account_id between 3 and 6 order by 1",
    )
    assert rows == [(3, False, True), (4, True, None), (5, False, None), (6, False, None)]


@pytest.mark.parametrize("crm", ["duckdb", "postgres"], indirect=True)
def test_every_column_type_lands_the_same_from_the_log_as_from_the_snapshot(crm) -> None:
    settings, spec, engine = crm
    cdc.setup(engine.url, spec)
    assert ingest(spec, settings).ok
    sql(
        engine,
        "insert into kinds select 2, u, tags, span, doc, ratio, at_time, price, flag, day, ts, cash, exact, words, "
        "flags, floats, grid from kinds",
    )
    assert ingest(spec, settings).ok
    types = raw(settings, "select data_type from information_schema.columns where table_name = 'kinds' order by 1")
    assert len(types) > 10
    snapshot, logged = raw(
        settings,
        "select * exclude (id, _dlt_load_id, _source_lsn, _source_committed_at) from raw_crm.kinds order by id",
    )
    assert snapshot == logged
    assert snapshot[1:3] == ("[1,2,3]", "1 day 02:03:04")  # arrays land as JSON, intervals as text
    # money as its numeric (the log writes '-$92,233,...'), arrays as to_json writes them: exact
    assert snapshot[10:16] == (
        Decimal("-92233720368547758.0800"),
        '[1.000000000000000000000000000000000000000001,"NaN",null,"-Infinity"]',
        '["a b","c,d",null,"NULL","q\\"x","back\\\\slash","é😀","plain"]',
        "[true,false,null]",
        '[0.1,1.5e+300,"NaN","-Infinity"]',
        "[[1,2],[3,null]]",
    )


def test_unchanged_toasted_values_and_truncates(crm) -> None:
    """An update leaves a large (TOASTed) value out of the stream: raw keeps it. A TRUNCATE marks
    every row deleted at its commit time; rows inserted after it stay live."""
    settings, spec, engine = crm
    sql(engine, "alter table notes alter column body set storage external")
    cdc.setup(engine.url, spec)
    assert ingest(spec, settings).ok
    big = "y" * 20_000
    sql(engine, f"update notes set body = '{big}' where note_id in (3, 4)")
    sql(engine, "update notes set account_id = 33 where note_id = 3")  # same batch: body from the change before
    assert ingest(spec, settings).ok
    sql(engine, "update notes set account_id = 44 where note_id = 4")  # next batch: body from raw
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert stats(result)["notes"] == (1, 0)
    assert live(settings, "notes", "note_id", "note_id, account_id, length(body)")[2:4] == [
        (3, 33, 20_000),
        (4, 44, 20_000),
    ]
    assert_raw_equals_source(settings, engine)

    sql(engine, "update notes set body = 'before' where note_id = 5", "truncate notes")
    sql(engine, "insert into notes values (100, 1, 'after the truncate')")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert stats(result)["notes"] == (1, 20)
    assert_raw_equals_source(settings, engine)
    ((deleted_at, committed),) = raw(
        settings, "select distinct _deleted_at, _source_committed_at from raw_crm.notes where _is_deleted"
    )
    assert deleted_at == committed
    assert raw(settings, "select body from raw_crm.notes where note_id = 5") == [("before",)]


LINES_YML = """
sources:
  erp:
    kind: database
    tables:
      lines:
        primary_key: [order_id, line_no]
        deletes: cdc
"""


def test_a_composite_key_through_the_log(logical_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table keyed by (order_id, line_no): updates and deletes find their row by both columns, an
    update of a key column deletes the old key, an unchanged TOASTed value is filled in by the whole
    key, a key back after its deletion is stamped, and a TRUNCATE deletes every key."""
    configure_dlt()
    (tmp_path / "sources.yml").write_text(LINES_YML)
    monkeypatch.setenv("SOURCES__ERP__CREDENTIALS", logical_pg_url)
    spec = load_sources(tmp_path / "sources.yml")["erp"]
    engine = sa.create_engine(logical_pg_url)
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)

    def rows() -> list[tuple]:
        return raw(
            settings,
            "select order_id, line_no, qty, length(note), _is_deleted, _restored_at is not null "
            "from raw_erp.lines order by 1, 2",
        )

    try:
        sql(
            engine,
            "create table lines (order_id int, line_no int, qty int, note text, primary key (order_id, line_no))",
            "alter table lines alter column note set storage external",
            "insert into lines select o, l, o * 10 + l, repeat('n', 20000) from generate_series(1, 2) o, "
            "generate_series(1, 3) l",
        )
        cdc.setup(engine.url, spec)
        assert stats(ingest(spec, settings)) == {"lines": (6, 0)}
        sql(
            engine,
            "update lines set qty = 99 where order_id = 1 and line_no = 2",  # the note stays TOASTed
            "update lines set line_no = 4 where order_id = 2 and line_no = 3",  # a key column changes
            "delete from lines where order_id = 1 and line_no = 3",
            # a new TOASTed value, then the key moves: the value comes from the change before
            "update lines set note = repeat('m', 30000) where order_id = 1 and line_no = 1",
            "update lines set line_no = 5 where order_id = 1 and line_no = 1",
        )
        result = ingest(spec, settings)
        assert stats(result) == {"lines": (3, 3)}  # the live rows; the deletes counted apart
        assert rows() == [
            (1, 1, 11, 30000, True, False),
            (1, 2, 99, 20000, False, False),
            (1, 3, 13, 20000, True, False),
            (1, 5, 11, 30000, False, False),
            (2, 1, 21, 20000, False, False),
            (2, 2, 22, 20000, False, False),
            (2, 3, 23, 20000, True, False),
            (2, 4, 23, 20000, False, False),
        ]
        sql(engine, "insert into lines values (1, 3, 7, 'back')")
        assert stats(ingest(spec, settings)) == {"lines": (1, 0)}
        assert (1, 3, 7, 4, False, True) in rows()
        sql(engine, "truncate lines")
        assert stats(ingest(spec, settings)) == {"lines": (0, 6)}
        assert [r[4] for r in rows()] == [True] * 8
    finally:
        engine.dispose()


def test_a_new_source_column_arrives_and_a_dropped_one_stops_the_table(crm) -> None:
    settings, spec, engine = crm
    cdc.setup(engine.url, spec)
    assert ingest(spec, settings).ok
    sql(engine, "update notes set body = 'old shape' where note_id = 1")
    sql(engine, "alter table notes add column mood text", "update notes set mood = 'happy' where note_id = 2")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert raw(settings, "select note_id, body, mood from raw_crm.notes where note_id <= 2 order by 1") == [
        (1, "old shape", None),
        (2, "xxxxx", "happy"),
    ]
    sql(engine, "alter table notes drop column body")
    result = ingest(spec, settings)
    assert not result.ok
    assert "source 'crm', table 'notes': column(s) ['body'] were dropped" in (result.error or "")


def test_the_position_only_moves_with_the_data(crm) -> None:
    """A run that extracted changes but died before loading leaves the slot where it was; the next
    run loads that package, then reads only the newer changes: nothing lost, nothing twice."""
    settings, spec, engine = crm
    cdc.setup(engine.url, spec)
    assert ingest(spec, settings).ok
    sql(
        engine, "update accounts set balance = 1.00 where account_id = 10", "delete from accounts where account_id = 11"
    )
    pipeline = make_pipeline(spec, target(settings))
    plans = plan_source(pipeline, engine.url, spec)
    pipeline.extract(database_source(spec, engine.url, plans, settings.data_dir / "staging"))
    assert pipeline.has_pending_data  # as if killed before the load
    sql(engine, "update accounts set balance = 2.00 where account_id = 12")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert result.finished_pending
    assert stats(result)["accounts"] == (1, 0)  # only account 12 is new in this run's extract
    assert_raw_equals_source(settings, engine)
    assert raw(settings, "select count(*) from raw_crm.accounts where _is_deleted") == [(1,)]


def test_a_failed_extract_reads_the_same_changes_again(crm, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, spec, engine = crm
    cdc.setup(engine.url, spec)
    assert ingest(spec, settings).ok
    sql(engine, "delete from notes where note_id = 7", "update accounts set name = 'renamed' where account_id = 8")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the warehouse went away")

    with monkeypatch.context() as m:
        m.setattr(cdc, "resolve", broken)
        failed = ingest(spec, settings)
    assert not failed.ok and "the warehouse went away" in (failed.error or "")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert stats(result) == {"accounts": (1, 0), "notes": (0, 1), "kinds": (0, 0)}
    assert_raw_equals_source(settings, engine)


@pytest.mark.parametrize("delay", [1.0, "extract", "load"])
def test_a_sigkilled_cdc_ingest_loses_and_repeats_nothing(crm, delay: float | str) -> None:
    settings, spec, engine = crm
    cdc.setup(engine.url, spec)
    assert ingest(spec, settings).ok
    sql(
        engine,
        "update accounts set balance = balance + 1 where account_id % 3 = 0",
        "delete from accounts where account_id % 7 = 0",
        "insert into notes select g, g, 'more' from generate_series(21, 3000) g",
    )
    kill_ingest_after(settings, "crm", delay)
    sql(engine, "update accounts set name = 'after the kill' where account_id = 1")
    result = ingest(spec, settings)
    assert result.ok, result.error
    assert_raw_equals_source(settings, engine)
    assert raw(settings, "select count(*) from raw_crm.accounts where _is_deleted") == [(7,)]
    assert raw(settings, "select count(*), count(distinct note_id) from raw_crm.notes") == [(3000, 3000)]
    quiet = ingest(spec, settings)
    assert quiet.ok and stats(quiet) == {"accounts": (0, 0), "notes": (0, 0), "kinds": (0, 0)}


def test_refusals_name_the_source_and_table(crm, tmp_path: Path) -> None:
    settings, spec, engine = crm
    sql(engine, "create table loose (id int, v text)")
    loose = SourceSpec("crm", "database", "", False, (TableSpec("loose", ("id",), None, "merge", "cdc"),))
    with pytest.raises(cdc.CdcError, match=r"source 'crm', table 'loose': deletes would not carry the declared"):
        cdc.setup(engine.url, loose)
    cdc.setup(engine.url, spec)
    assert ingest(spec, settings).ok
    sql(engine, "update notes set body = 'lost' where note_id = 1")
    with engine.connect() as con:
        con.execute(sa.text("select pg_replication_slot_advance('dusk_crm', pg_current_wal_lsn())"))
    result = ingest(spec, settings)
    assert not result.ok
    assert "replication slot 'dusk_crm' was advanced to" in (result.error or "")
    assert "outside dusk" in (result.error or "")
    with pytest.raises(ValueError, match=r"source 'crm': the CDC tables share one slot; select all of them or none"):
        plan_source(make_pipeline(spec, target(settings)), engine.url, spec, only={"accounts"})
    sqlite = sa.URL.create("sqlite", database=str(tmp_path / "x.sqlite"))
    with pytest.raises(Exception, match=r"source 'crm', table 'accounts': deletes: cdc needs PostgreSQL"):
        plan_source(make_pipeline(spec, target(settings)), sqlite, spec)


def test_the_cli_sets_up_and_drops_the_slot(crm) -> None:
    _settings, _spec, engine = crm
    env = dict(os.environ)
    cli = [sys.executable, "-m", "dusk", "cdc"]
    setup = subprocess.run([*cli, "setup", "crm"], env=env, capture_output=True, text=True, check=True)
    assert "replication slot dusk_crm created (pgoutput)" in setup.stdout
    with engine.connect() as con:
        assert (
            con.execute(sa.text("select count(*) from pg_replication_slots where slot_name = 'dusk_crm'")).scalar() == 1
        )
    dropped = subprocess.run([*cli, "drop", "crm"], env=env, capture_output=True, text=True, check=True)
    assert "replication slot dusk_crm dropped" in dropped.stdout
    unknown = subprocess.run([*cli, "setup", "nope"], env=env, capture_output=True, text=True)
    assert unknown.returncode == 1 and "no source 'nope'" in unknown.stderr


def test_setup_refuses_a_server_without_logical_wal() -> None:
    url = sa.make_url("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        with cdc.connect(url) as conn:
            level = conn.execute("show wal_level").fetchone()[0]  # type: ignore[index]
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    if level == "logical":
        pytest.skip("the machine's server runs with wal_level=logical: nothing to refuse")
    spec = SourceSpec("crm", "database", "", False, (TableSpec("accounts", ("account_id",), None, "merge", "cdc"),))
    with pytest.raises(cdc.CdcError, match=rf"source 'crm': the server runs with wal_level={level}; CDC needs"):
        cdc.setup(url, spec)


def test_a_read_only_replication_role_is_all_extraction_needs(crm, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented least-privilege role: LOGIN REPLICATION, read-only, SELECT on the tables."""
    settings, spec, engine = crm
    cdc.setup(engine.url, spec)  # the owner sets up publication and slot once
    role = f"dusk_cdc_{os.getpid()}"
    sql(
        engine,
        f"create role {role} login replication",
        f"alter role {role} set default_transaction_read_only = on",
        f"grant usage on schema public to {role}",
        f"grant select on all tables in schema public to {role}",
    )
    try:
        monkeypatch.setenv("SOURCES__CRM__CREDENTIALS", engine.url.set(username=role).render_as_string())
        assert ingest(spec, settings).ok
        sql(engine, "delete from accounts where account_id = 5", "update notes set body = 'ro' where note_id = 6")
        result = ingest(spec, settings)
        assert result.ok, result.error
        assert stats(result) == {"accounts": (0, 1), "notes": (1, 0), "kinds": (0, 0)}
        assert_raw_equals_source(settings, engine)
    finally:
        sql(engine, f"drop owned by {role}", f"drop role {role}")


def test_log_text_becomes_what_the_snapshot_reads() -> None:
    """The log writes arrays and money in the server's text; raw holds to_json's arrays and
    money's numeric. Money follows lc_monetary; an array type without an exact conversion is
    refused with the fix, never loaded approximately."""
    money = cdc.log_text_converter(SourceColumn("m", "money", "DECIMAL(38, 4)"), lambda t: t)
    assert money is not None and money("x") == "x"  # the server-derived parser is used as is
    numbers = cdc.log_text_converter(SourceColumn("a", "numeric(10,2)[]", "JSON"), lambda t: t)
    assert numbers is not None and numbers("[0:1]={1.50,NULL}") == "[1.50,null]"
    assert cdc.log_text_converter(SourceColumn("t", "text", "VARCHAR"), lambda t: t) is None
    with pytest.raises(cdc.CdcError, match=r"columns: \{ts: text\}"):
        cdc.log_text_converter(SourceColumn("ts", "timestamp without time zone[]", "JSON"), lambda t: t)
    # the fix the refusal names: declared text, the array lands as the log's own text, unconverted
    as_text = SourceColumn("ts", "timestamp without time zone[]", "VARCHAR", source_expr="format('%s', ts)")
    assert cdc.log_text_converter(as_text, lambda t: t) is None
