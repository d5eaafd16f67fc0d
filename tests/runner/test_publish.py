"""Write-audit-publish: readers get a served file replaced whole, only after a night passed; a
reader never blocks the nightly; a night killed during dbt is finished by the next run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from dusk.steps.publish import published_run
from tests.conftest import PROJECT_DIR, Workspace, delete_demo_stream
from tests.test_end_to_end import assert_marts_equal_from_scratch

pytestmark = pytest.mark.e2e

READER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("select run_id from dusk_published.about").fetchone()[0], flush=True)
for line in sys.stdin:  # each line: query again on the connection held all along
    run = con.execute("select run_id from dusk_published.about").fetchone()[0]
    orders = con.execute("select count(*) from marts.orders").fetchone()[0]
    print(run, orders, flush=True)
"""


def served(ws: Workspace) -> Path:
    return ws.data_dir / "served.duckdb"


def test_readers_see_only_passed_nights_and_never_block_the_nightly(workspace: Workspace) -> None:
    ws = workspace
    ws.cli("run")
    first = ws.last_run()
    assert first["published"]["where"] == str(served(ws))
    first_id = published_run(served(ws))
    assert first_id is not None
    with duckdb.connect(str(served(ws)), read_only=True) as con:
        schemas = {s for (s,) in con.execute("select distinct table_schema from information_schema.tables").fetchall()}
        orders_before = con.execute("select count(*) from marts.orders").fetchone()[0]
    assert {"marts", "snapshots", "staging", "dusk_ledger", "dusk_published"} <= schemas
    assert not {s for s in schemas if s.startswith("raw_")} and "dusk_private" not in schemas  # no PII, no salt

    # a reader (a notebook, a BI tool) holds the served file open through the next nightly
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(served(ws))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert reader.stdin is not None and reader.stdout is not None
    try:
        assert reader.stdout.readline().strip() == first_id
        ws.cli("simulate", "--days", "1")
        second = ws.cli("run")  # check=True: the held reader did not block or fail it
        assert "Published:" in second.stdout
        reader.stdin.write("again\n")
        reader.stdin.flush()
        # the reader's open connection still sees the night it opened, whole
        assert reader.stdout.readline().split() == [first_id, str(orders_before)]
    finally:
        reader.kill()
        reader.wait()
    second_id = published_run(served(ws))
    assert second_id is not None and second_id > first_id  # a new connection sees tonight's data
    with duckdb.connect(str(served(ws)), read_only=True) as con, duckdb.connect(str(ws.warehouse)) as wh:
        assert con.execute("select count(*) from marts.orders").fetchone()[0] > orders_before
        assert (
            con.execute("select count(*) from dusk_ledger.runs").fetchone()
            == wh.execute("select count(*) from dusk_ledger.runs").fetchone()
        )
        # the served ledger says what readers hold: tonight published, the run as it ended
        publish = "select status from dusk_ledger.steps where run_id = ? and step = 'publish'"
        assert con.execute(publish, [second_id]).fetchall() == [("ok",)]
        run = "select status from dusk_ledger.runs where run_id = ?"
        assert con.execute(run, [second_id]).fetchone() == ("success",) == wh.execute(run, [second_id]).fetchone()

    # A test that fails withholds what its sources feed: an order in a currency without an FX
    # rate fails the test that every order has an FX rate (built from the shop and marketing).
    # Readers keep last night's orders; the night is partial.
    with sqlite3.connect(ws.shop_db) as shop:
        shop.execute(
            "update orders set currency_code = 'CHF', updated_at = '2030-01-01 00:00:00.000000' "
            "where order_id = (select min(order_id) from orders)"
        )
    failing = ws.cli("run", check=False)
    assert failing.returncode == 3, failing.stdout
    text = " ".join(failing.stdout.split())
    assert "FAILED test daily_revenue_every_order_has_an_fx_rate" in failing.stdout
    assert "withheld shop (test daily_revenue_every_order_has_an_fx_rate fail)" in text, text
    third = ws.last_run()
    assert third["status"] == "partial" and published_run(served(ws)) == third["run_id"]
    assert "marts.orders" in third["published"]["kept"]
    with duckdb.connect(str(served(ws)), read_only=True) as con:
        assert con.execute("select count(*) from marts.orders where currency_code = 'CHF'").fetchone() == (0,)
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        steps = wh.execute("select status from dusk_ledger.steps where step = 'publish' order by run_id").fetchall()
    assert [s for (s,) in steps] == ["ok", "ok", "ok"]
    assert not list(ws.data_dir.glob("served.duckdb.next*"))


def _kill_when_dbt_builds(ws: Workspace, marker: str) -> None:
    """Start `dusk run` in its own process group and SIGKILL the group when dbt's log shows
    ``marker`` (a node starting), i.e. in the middle of the build."""
    log = ws.root / "logs" / "dbt.log"
    size = log.stat().st_size if log.exists() else 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "dusk", "run"],
        cwd=PROJECT_DIR,
        env=ws.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    found = False
    while proc.poll() is None and time.monotonic() < deadline and not found:
        if log.exists():
            with log.open(errors="replace") as f:
                f.seek(size)
                found = marker in f.read()
        time.sleep(0.05)
    assert found and proc.poll() is None, f"the run ended before dbt started {marker!r}"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_a_run_killed_during_dbt_is_finished_by_the_next_one(workspace: Workspace, tmp_path: Path) -> None:
    """SIGKILL in the middle of `dbt build` (after staging, while the snapshots and marts are
    being built), then a rerun: the warehouse equals a from-scratch build of the same sources,
    no half-built relation is left, and readers saw the previous night until the rerun passed."""
    ws = workspace
    ws.cli("run")
    before = published_run(served(ws))
    ws.cli("simulate", "--days", "1")
    _kill_when_dbt_builds(ws, "START snapshot snapshots.customers_snapshot")
    assert published_run(served(ws)) == before  # the killed night was never served
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:  # the ledger shows how far it got
        (killed,) = wh.execute("select run_id from dusk_ledger.runs where status = 'running'").fetchone()
        steps = wh.execute("select distinct step from dusk_ledger.steps where run_id = ?", [killed]).fetchall()
        assert {s for (s,) in steps} == {"ingest"}
    assert not (ws.data_dir / "runs" / f"{killed}.json").exists()  # the JSON record is written once, at the end
    again = ws.cli("run")
    assert "took over the lock" in again.stdout and "Run SUCCESS" in again.stdout
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        status = wh.execute("select status from dusk_ledger.runs where run_id = ?", [killed]).fetchone()
        assert status == ("killed",)
        leftovers = wh.execute(
            "select table_schema, table_name from information_schema.tables "
            "where regexp_matches(table_name, '__dbt_(tmp|backup)')"
        ).fetchall()
        assert leftovers == []
        one_current = wh.execute(
            "select count(*) from (select customer_id from snapshots.customers_snapshot "
            "where dbt_valid_to is null group by 1 having count(*) > 1)"
        ).fetchone()
        assert one_current == (0,)
    assert published_run(served(ws)) != before
    scratch = Workspace(tmp_path / "scratch")
    try:
        assert_marts_equal_from_scratch(ws, scratch)
    finally:
        delete_demo_stream(scratch.sources_file)


def test_docs_that_fail_never_keep_tested_data_from_readers(workspace: Workspace) -> None:
    """`dbt docs generate` failing (here: its page cannot be written) is reported, and the night
    whose build and tests passed is published all the same."""
    ws = workspace
    (ws.root / "target" / "static_index.html").mkdir(parents=True)  # the docs page cannot be written
    out = ws.cli("run", check=False)
    record = ws.last_run()
    assert record["dbt"]["docs_error"] and record["dbt"]["docs_path"] is None
    assert record["status"] == "success" and out.returncode == 0, out.stdout
    assert published_run(served(ws)) == record["run_id"]
    assert "docs not generated (the data was still published)" in " ".join(out.stdout.split())
