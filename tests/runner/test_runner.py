"""The runner as an on-call engineer meets it: one run at a time, stale locks, partial nights."""

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

from dusk.lock import Locked, run_lock
from tests.conftest import Workspace

HOLD = (
    "import sys, time; from pathlib import Path; from dusk.lock import run_lock\n"
    "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)\n"
)


def hold_lock(data_dir: Path) -> subprocess.Popen[str]:
    """Another process holding the run lock (as a running night would)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(data_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_exits_at_once_naming_the_holder(workspace: Workspace) -> None:
    holder = hold_lock(workspace.data_dir)
    try:
        started = time.monotonic()
        out = workspace.cli("run", check=False)
        assert out.returncode == 4, out.stdout + out.stderr
        assert time.monotonic() - started < 30
        assert f"PID {holder.pid}" in out.stderr and "started 20" in out.stderr
        assert not (workspace.data_dir / "runs").exists()  # nothing ran
        with pytest.raises(Locked, match=f"PID {holder.pid}"), run_lock(workspace.data_dir):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert str(holder.pid) in (tmp_path / "run.lock").read_text()  # the dead holder's record is still there
    with run_lock(tmp_path) as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == holder.pid
        assert str(os.getpid()) in (tmp_path / "run.lock").read_text()
    with run_lock(tmp_path) as lock:  # released cleanly: nothing to take over
        assert lock.took_over is None


def test_a_failing_source_leaves_the_others_built_and_ends_partial(workspace: Workspace) -> None:
    """A source that fails (here: a table renamed at the source) ends the night partial: the other
    sources load and everything that does not depend on the failed one is built and tested; what
    depends on it is left as it was; the next night, with the source back, succeeds."""
    ws = workspace
    ws.cli("run")
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        orders_before = wh.sql("select count(*), max(last_load) from marts.orders").fetchone()
    ws.cli("simulate", "--days", "1")
    with sqlite3.connect(ws.shop_db) as shop:
        shop.execute("alter table order_items rename to order_lines")
    out = ws.cli("run", check=False)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "PARTIAL" in out.stdout and "downstream of the failed source(s) as it was: shop" in out.stdout
    record = ws.last_run()
    assert record["status"] == "partial" and record["ok"] is False
    shop_result = next(s for s in record["sources"] if s["source"] == "shop")
    assert not shop_result["ok"] and "order_items" in shop_result["error"]
    payments = next(s for s in record["sources"] if s["source"] == "payments")
    assert payments["ok"] and payments["tables"][0]["loaded"] > 0
    names = {n["name"]: n["status"] for n in record["dbt"]["nodes"]}
    assert names["stg_payments__payments"] == names["stg_marketing__marketing_spend"] == "success"
    assert not {"stg_shop__orders", "orders", "customers_snapshot", "daily_revenue"} & set(names)
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        assert wh.sql("select count(*), max(last_load) from marts.orders").fetchone() == orders_before

    with sqlite3.connect(ws.shop_db) as shop:  # the source is back
        shop.execute("alter table order_lines rename to order_items")
    again = ws.cli("run", check=False)
    assert again.returncode == 0, again.stdout
    assert ws.last_run()["status"] == "success"
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        assert wh.sql("select count(*) from marts.orders").fetchone()[0] > orders_before[0]
