"""The warehouse is a choice: the same nights on PostgreSQL give what they give on DuckDB.

Two workspaces with the same demo seed, salt and key-diff clock run the same nights, one on the
embedded DuckDB file and one on a PostgreSQL database of its own (created by the runner on first
use). Their marts and snapshots are compared row for row; the PostgreSQL night's ledger, status,
report and write-audit-publish (a reader holding the served schemas through a publish) are
checked where a user sees them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pytest

from dusk.settings import PostgresSettings
from dusk.warehouse.postgres_engine import placeholders
from ingestion.database.scan import load_extension
from tests.conftest import Workspace, _service_missing, delete_demo_stream
from tests.proof.invariants import MARTS, SNAPSHOTS

pytestmark = pytest.mark.e2e

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SAME_NIGHT = {
    "DUSK_PII_SALT": "engines-suite-salt-0001",
    "DUSK_DETECTED_AT": "2026-01-20T00:00:00Z",  # what key-diff finds is stamped with the same clock
}
RUN_CLOCKS = {"orders": "last_load"}
"""Mart columns that hold a dlt load id (differs between two warehouses by nature)."""
SNAPSHOT_CLOCKS = "dlt_load_id"


@pytest.fixture
def pg_databases() -> Iterator[list[str]]:
    """Two names of PostgreSQL databases that do not exist yet (the runner creates them), dropped
    afterwards."""
    try:
        psycopg.connect(ADMIN, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        _service_missing(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    names = [f"dusk_test_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield names
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        for name in names:
            admin.execute(f"drop database if exists {name} with (force)")


def on_duckdb(ws: Workspace) -> tuple[str, str]:
    """What DuckDB attaches for a workspace's DuckDB warehouse, and how."""
    return str(ws.warehouse), "(read_only)"


def on_postgres(database: str) -> tuple[str, str]:
    """What DuckDB attaches for a PostgreSQL warehouse, and how."""
    return f"host=127.0.0.1 user=postgres dbname={database}", "(type postgres, read_only)"


def differences(left: tuple[str, str], right: tuple[str, str]) -> dict[str, int]:
    """Rows in one warehouse's mart or snapshot and not in the other's (both ways, duplicates
    counted), per relation that differs; compared in DuckDB, both warehouses attached read-only
    (:func:`on_duckdb`, :func:`on_postgres`)."""
    found = {}
    with duckdb.connect() as con:
        load_extension(con, "duckdb_extension_postgres_scanner")
        con.execute("set TimeZone = 'UTC'")
        for (what, how), alias in ((left, "l"), (right, "r")):
            con.execute(f"attach '{what}' as {alias} {how}")
        relations = [(f"marts.{m}", RUN_CLOCKS.get(m)) for m in MARTS]
        relations += [(f"snapshots.{s}", SNAPSHOT_CLOCKS) for s in SNAPSHOTS]
        for relation, clocks in relations:
            columns = f"* exclude ({clocks})" if clocks else "*"
            ours, theirs = f"select {columns} from l.{relation}", f"select {columns} from r.{relation}"
            for (a, b), only in (((ours, theirs), "left"), ((theirs, ours), "right")):
                (n,) = con.execute(f"select count(*) from ({a} except all {b})").fetchone()  # type: ignore[misc]
                if n:
                    found[f"{relation}: {only} only"] = int(n)
            (rows,) = con.execute(f"select count(*) from l.{relation}").fetchone()  # type: ignore[misc]
            assert rows or relation == "marts.daily_web_activity", f"{relation} is empty: nothing was compared"
    return found


def test_nights_on_postgres_equal_the_same_nights_on_duckdb(tmp_path: Path, pg_databases: list[str]) -> None:
    """Two nights on each engine; then the DuckDB installation moves to PostgreSQL (dusk migrate)
    and both run a third night."""
    pg_database, moved_database = pg_databases
    duck, pg = Workspace(tmp_path / "duckdb"), Workspace(tmp_path / "postgres")
    on_pg = {**SAME_NIGHT, "DUSK_TARGET": "postgres", "DUSK_PG_DATABASE": pg_database, "DUSK_PG_LOCK_TIMEOUT": "2"}
    for ws in (duck, pg):
        ws.root.mkdir()
    try:
        for ws, env in ((duck, SAME_NIGHT), (pg, on_pg)):
            out = ws.cli("run", env_extra=env)
            assert "Run SUCCESS" in out.stdout, out.stdout
        assert f"Warehouse: postgresql://postgres@127.0.0.1:5432/{pg_database}" in out.stdout
        assert pg.last_run()["published"]["where"].endswith("(served_*)")
        assert not pg.warehouse.exists()  # nothing of the night went to a DuckDB file

        # a reader (a BI tool) opens a transaction on the served schemas and holds it through the next night
        reader = psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg_database}")
        try:
            first_id = reader.execute("select run_id from served_dusk_published.about").fetchone()
            orders_before = reader.execute("select count(*) from served_marts.orders").fetchone()
            assert first_id == (pg.last_run()["run_id"],)
            for ws, env in ((duck, SAME_NIGHT), (pg, on_pg)):
                ws.cli("simulate", "--days", "1", env_extra=env)
                out = ws.cli("run", env_extra=env)  # the held reader neither blocks nor fails it
                assert "Run SUCCESS" in out.stdout, out.stdout
            second_id = pg.last_run()["run_id"]
            # each statement reads one whole night: the reader's next one sees tonight's, all of it
            assert reader.execute("select run_id from served_dusk_published.about").fetchone() == (second_id,)
            orders_after = reader.execute("select count(*) from served_marts.orders").fetchone()
            assert orders_after is not None and orders_before is not None and orders_after[0] > orders_before[0]
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg_database}") as other:
                retired = other.execute(
                    "select nspname from pg_namespace where nspname like 'served\\_%\\_\\_retired\\_%'"
                ).fetchall()
            # the first night's tables, which the reader still holds, wait for a later publish
            assert retired and all("__retired_" in name for (name,) in retired)
        finally:
            reader.close()

        assert differences(on_duckdb(duck), on_postgres(pg_database)) == {}
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg_database}") as con:
            runs = con.execute("select status from dusk_ledger.runs order by run_id").fetchall()
            assert runs == [("success",), ("success",)]
            served_runs = con.execute("select status from served_dusk_ledger.runs order by run_id").fetchall()
            assert served_runs == runs  # the served ledger says what readers hold
            schemas = {s for (s,) in con.execute("select nspname from pg_namespace").fetchall()}
            assert {"served_marts", "served_snapshots", "served_staging", "served_dusk_ledger"} <= schemas
            assert not {s for s in schemas if s.startswith("served_raw") or s == "served_dusk_private"}
            assert not {s for s in schemas if s.endswith("__next")}

        status = pg.cli("status", env_extra=on_pg)
        assert second_id in status.stdout and "success" in status.stdout
        report = pg.cli("report", env_extra=on_pg)
        page = Path(report.stdout.strip().removeprefix("Report: ")).read_text()
        assert f"postgresql://postgres@127.0.0.1:5432/{pg_database}" in page and second_id in page

        # the DuckDB installation moves to a database of its own, and goes on there where it was
        moved = duck.cli("migrate", "--to", "postgres", env_extra={**SAME_NIGHT, "DUSK_PG_DATABASE": moved_database})
        assert "Every table equals its copy" in moved.stdout, moved.stdout
        on_moved = {**on_pg, "DUSK_PG_DATABASE": moved_database}
        for ws, env in ((duck, on_moved), (pg, on_pg)):
            ws.cli("simulate", "--days", "1", env_extra=env)
            out = ws.cli("run", env_extra=env)
            assert "Run SUCCESS" in out.stdout, out.stdout
        night = [
            {(s["source"], t["table"]): t for s in ws.last_run()["sources"] for t in s["tables"]} for ws in (duck, pg)
        ]
        assert night[0] == night[1]  # the moved installation read only the night's changes, as the other did
        assert differences(on_postgres(moved_database), on_postgres(pg_database)) == {}
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{moved_database}") as con:
            assert con.execute("select count(*) from dusk_ledger.runs where status = 'success'").fetchone() == (3,)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{pg_database}", autocommit=True) as con:
            con.execute(
                "update marts.daily_revenue set revenue = revenue + 0.01 where order_date = "
                "(select min(order_date) from marts.daily_revenue)"
            )
        assert differences(on_postgres(moved_database), on_postgres(pg_database)) == {  # the compare sees a cent
            "marts.daily_revenue: left only": 1,
            "marts.daily_revenue: right only": 1,
        }

    finally:
        for ws in (duck, pg):
            delete_demo_stream(ws.sources_file)


def test_the_postgres_password_stays_out_of_urls_shown() -> None:
    pg = PostgresSettings(user="etl", password="s3cret/pw@x", database="wh")
    assert pg.url(password=False) == "postgresql://etl@127.0.0.1:5432/wh"
    assert pg.url() == "postgresql://etl:s3cret%2Fpw%40x@127.0.0.1:5432/wh"


def test_sql_is_written_once_with_question_marks() -> None:
    assert placeholders("select ? from t where a = ? and b like 'x?%'") == (
        "select %s from t where a = %s and b like 'x?%%'"
    )
    assert placeholders('select "odd?name" from t where c = ?') == 'select "odd?name" from t where c = %s'


@pytest.mark.parametrize("value", ["spark", "sqlite", "Snowflake"])
def test_an_unknown_target_is_refused_by_name(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from dusk.settings import Settings

    monkeypatch.setenv("DUSK_TARGET", value)
    with pytest.raises(ValueError, match="DUSK_TARGET must be one of duckdb, postgres"):
        Settings.from_env()
    monkeypatch.delenv("DUSK_TARGET")
    assert Settings.from_env().target == "duckdb"
