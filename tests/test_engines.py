"""The warehouse is a choice: the same nights on PostgreSQL give what they give on DuckDB.

Two workspaces with the same demo seed, salt and key-diff clock run the same night, one on the
embedded DuckDB file and one on a PostgreSQL database of its own (created by the runner on first
use); their marts and snapshots are compared row for row. Then the DuckDB installation moves to
PostgreSQL (`dusk migrate`) and both run a second night there, compared again, while a reader
holds the served schemas of one through its publish; its ledger, status and report are checked
where a user sees them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from dusk.settings import PostgresSettings
from dusk.warehouse.postgres_engine import placeholders
from tests.conftest import Workspace, delete_demo_stream, pg_databases, read_warehouse
from tests.helpers import diff_counts, lineage_events
from tests.proof import invariants
from tests.proof.invariants import MARTS, SNAPSHOTS

pytestmark = pytest.mark.e2e

SAME_NIGHT = {
    "DUSK_PII_SALT": "engines-suite-salt-0001",
    "DUSK_DETECTED_AT": "2026-01-20T00:00:00Z",  # what key-diff finds is stamped with the same clock
}
RUN_CLOCKS = {"orders": "last_load"}
"""Mart columns that hold a dlt load id (differs between two warehouses by nature)."""
SNAPSHOT_CLOCKS = "dlt_load_id"


def differences(left: tuple[str, str], right: tuple[str, str]) -> dict[str, int]:
    """Rows in one warehouse's mart or snapshot and not in the other's (both ways, duplicates
    counted), less the run clocks, per relation that differs; ``left`` and ``right`` as
    :attr:`Workspace.attach` gives them."""
    relations = [f"marts.{m}" for m in MARTS] + [f"snapshots.{s}" for s in SNAPSHOTS]
    clocks = {f"marts.{m}": c for m, c in RUN_CLOCKS.items()} | {f"snapshots.{s}": SNAPSHOT_CLOCKS for s in SNAPSHOTS}
    with read_warehouse(left) as con:
        for relation in relations:
            (rows,) = con.execute(f"select count(*) from {relation}").fetchone()
            assert rows or relation == "marts.daily_web_activity", f"{relation} is empty: nothing was compared"
    return invariants.differences(left, right, relations, clocks)


def test_nights_on_postgres_equal_the_same_nights_on_duckdb(tmp_path: Path) -> None:
    with pg_databases(2) as (pg_database, moved_database):
        duck, pg = Workspace(tmp_path / "duckdb"), Workspace(tmp_path / "postgres", pg_database=pg_database)
        try:
            _nights(duck, pg, moved_database)
        finally:
            for ws in (duck, pg):
                delete_demo_stream(ws.sources_file)


def _nights(duck: Workspace, pg: Workspace, moved_database: str) -> None:
    env = {**SAME_NIGHT, "DUSK_PG_LOCK_TIMEOUT": "2"}
    for ws in (duck, pg):
        ws.root.mkdir()
        out = ws.cli("run", env_extra=env)
        assert "Run SUCCESS" in out.stdout, out.stdout
    assert f"Warehouse: postgresql://postgres@127.0.0.1:5432/{pg.pg_database}" in out.stdout
    assert pg.last_run()["published"]["where"].endswith("(served_*)")
    written = [o for e in lineage_events(pg.last_run()) for o in e["outputs"]]
    assert {o["namespace"] for o in written} == {"postgres://127.0.0.1:5432"}
    assert all(o["name"].startswith(f"{pg.pg_database}.") and o["facets"]["schema"]["fields"] for o in written)
    assert not pg.warehouse.exists()  # nothing of the night went to a DuckDB file
    assert differences(duck.attach, pg.attach) == {}

    # the DuckDB installation moves to a database of its own
    moved = duck.cli("migrate", "--to", "postgres", env_extra={**env, "DUSK_PG_DATABASE": moved_database})
    assert "Every table equals its copy" in moved.stdout, moved.stdout
    duck.pg_database = moved_database  # from now on its runs are on PostgreSQL

    # a reader (a BI tool) opens a transaction on the served schemas and holds it through the next night
    url = f"postgresql://postgres@127.0.0.1:5432/{pg.pg_database}"
    with psycopg.connect(url) as reader:
        first_id = reader.execute("select run_id from served_dusk_published.about").fetchone()
        orders_before = reader.execute("select count(*) from served_marts.orders").fetchone()
        assert first_id == (pg.last_run()["run_id"],)
        for ws in (duck, pg):
            ws.cli("simulate", "--days", "1", env_extra=env)
            out = ws.cli("run", env_extra=env)  # the held reader neither blocks nor fails it
            assert "Run SUCCESS" in out.stdout, out.stdout
        second_id = pg.last_run()["run_id"]
        # each statement reads one whole night: the reader's next one sees tonight's, all of it
        assert reader.execute("select run_id from served_dusk_published.about").fetchone() == (second_id,)
        orders_after = reader.execute("select count(*) from served_marts.orders").fetchone()
        assert orders_after is not None and orders_before is not None and orders_after[0] > orders_before[0]
        with psycopg.connect(url) as other:
            retired = other.execute("select nspname from pg_namespace where nspname like '%\\_\\_retired\\_%'")
            # the first night's tables, which the reader still holds, wait for a later publish
            assert [n for (n,) in retired.fetchall() if n.startswith("served_")]

    # the moved installation read only the night's changes, as the other did, and holds the same
    night = [{(s["source"], t["table"]): t for s in ws.last_run()["sources"] for t in s["tables"]} for ws in (duck, pg)]
    assert night[0] == night[1]
    # the data diff: the moved installation's readers had nothing on PostgreSQL yet (all new, the same rows)
    counts = diff_counts(pg.last_run())
    for d in duck.last_run()["diff"]:
        assert d["status"] == "new", d
        if d["relation"] in counts:
            assert d["rows_after"] == counts[d["relation"]][2], d
    assert differences(duck.attach, pg.attach) == {}
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{moved_database}") as con:
        assert con.execute("select status from dusk_ledger.runs order by run_id").fetchall() == [("success",)] * 2

    with psycopg.connect(url) as con:
        runs = con.execute("select status from dusk_ledger.runs order by run_id").fetchall()
        assert runs == [("success",), ("success",)]
        served_runs = con.execute("select status from served_dusk_ledger.runs order by run_id").fetchall()
        assert served_runs == runs  # the served ledger says what readers hold
        schemas = {s for (s,) in con.execute("select nspname from pg_namespace").fetchall()}
        assert {"served_marts", "served_snapshots", "served_staging", "served_dusk_ledger"} <= schemas
        assert not {s for s in schemas if s.startswith("served_raw") or s == "served_dusk_private"}
        assert not {s for s in schemas if s.endswith("__next")}
    status = pg.cli("status", env_extra=env)
    assert second_id in status.stdout and "success" in status.stdout
    report = pg.cli("report", env_extra=env)
    page = Path(report.stdout.strip().removeprefix("Report: ")).read_text()
    assert url in page and second_id in page

    with psycopg.connect(url, autocommit=True) as con:
        con.execute(
            "update marts.daily_revenue set revenue = revenue + 0.01 where order_date = "
            "(select min(order_date) from marts.daily_revenue)"
        )
    assert differences(duck.attach, pg.attach) == {  # the compare sees a cent
        "marts.daily_revenue - other.marts.daily_revenue": 1,
        "other.marts.daily_revenue - marts.daily_revenue": 1,
    }


def test_the_postgres_password_stays_out_of_urls_shown() -> None:
    pg = PostgresSettings(user="etl", password="s3cret/pw@x", database="wh")
    assert pg.url(password=False) == "postgresql://etl@127.0.0.1:5432/wh"
    assert pg.url() == "postgresql://etl:s3cret%2Fpw%40x@127.0.0.1:5432/wh"


def test_sql_is_written_once_with_question_marks() -> None:
    assert placeholders("select ? from t where a = ? and b like 'x?%'") == (
        "select %s from t where a = %s and b like 'x?%%'"
    )
    assert placeholders('select "odd?name" from t where c = ?') == 'select "odd?name" from t where c = %s'


def test_rows_insert_exactly_on_duckdb_whether_arrow_can_type_them_or_not() -> None:
    """The ledger's rows go into DuckDB as one Arrow table; a column Arrow cannot type as one
    (a number beside a text) goes in row by row, with the same values either way."""
    import duckdb

    from dusk.warehouse import insert_rows

    con = duckdb.connect()
    con.execute("create table t (id varchar, stamp timestamp, seconds double, n bigint, note varchar, x varchar)")
    at = datetime(2026, 12, 4, 13, 52, 1, 123456)
    rows = [["a", at, 0.1, None, None, "1"], ["b", None, 2, 2**62, "it's", "2"]]
    insert_rows(con, "t", rows)
    insert_rows(con, "t", [["c", at, 1.5, 3, "x", 7], ["d", at, 1.5, 4, "y", "text"]])  # x: a number and a text
    insert_rows(con, "t", [["e", at, 2.5, 5, "z"]], "(id, stamp, seconds, n, note)")
    insert_rows(con, "t", [])
    assert con.execute("select * from t order by id").fetchall() == [
        ("a", at, 0.1, None, None, "1"),
        ("b", None, 2.0, 2**62, "it's", "2"),
        ("c", at, 1.5, 3, "x", "7"),
        ("d", at, 1.5, 4, "y", "text"),
        ("e", at, 2.5, 5, "z", None),
    ]


@pytest.mark.parametrize("value", ["trino", "sqlite", "Snowflake"])
def test_an_unknown_target_is_refused_by_name(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from dusk.settings import Settings

    monkeypatch.setenv("DUSK_TARGET", value)
    with pytest.raises(ValueError, match="DUSK_TARGET must be one of duckdb, postgres, spark"):
        Settings.from_env()
    monkeypatch.delenv("DUSK_TARGET")
    assert Settings.from_env().target == "duckdb"
