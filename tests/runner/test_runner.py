"""The runner as an on-call engineer meets it: one run at a time, stale locks, partial nights."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from dusk.lock import Locked, run_lock
from dusk.settings import Settings
from dusk.steps.ingest import ingest_with_retries
from ingestion.declaration import SourceSpec, TableSpec
from ingestion.dlt_settings import configure_dlt
from tests.conftest import PROJECT_DIR, Workspace, _service_missing
from tests.helpers import PASSED, WebhookReceiver, project_copy, target

pytestmark = pytest.mark.e2e

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


def test_the_scheduler_command_passes_the_locked_code_on_before_loading_the_engines(workspace: Workspace) -> None:
    """bin/nightly (the README's cron line) exits 4 when locked out, where `make run` would exit 2,
    and the lock is tried before dlt, DuckDB, dbt or a database driver is imported."""
    holder = hold_lock(workspace.data_dir)
    try:
        out = subprocess.run(
            [str(PROJECT_DIR / "bin" / "nightly")],
            cwd=workspace.root,
            env={**workspace.env(), "PYTHONPROFILEIMPORTTIME": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 4, out.stdout + out.stderr
        assert f"PID {holder.pid}" in out.stderr
        imported = {
            line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")
        }
        assert "dusk.lock" in imported
        heavy = {"dlt", "duckdb", "dbt", "psycopg", "pyspark", "sqlalchemy", "pyarrow"}
        assert not {m for m in imported if m.split(".")[0] in heavy}
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
    # the console has one line per problem; the traceback is in the run's log file only
    assert "Traceback" not in out.stdout + out.stderr and "(traceback in the run's log)" in out.stderr
    assert "Traceback" in Path(ws.last_run()["log_path"]).read_text()
    record = ws.last_run()
    assert record["status"] == "partial" and record["ok"] is False
    shop_result = next(s for s in record["sources"] if s["source"] == "shop")
    assert not shop_result["ok"] and "order_items" in shop_result["error"]
    payments = next(s for s in record["sources"] if s["source"] == "payments")
    assert payments["ok"] and payments["tables"][0]["loaded"] > 0
    names = {n["name"]: n["status"] for n in record["dbt"]["nodes"]}
    assert names["stg_payments__payments"] == names["stg_marketing__marketing_spend"] == "success"
    assert not {"stg_shop__orders", "orders", "customers_snapshot", "daily_revenue"} & set(names)
    assert record["published"] is not None  # the others reach readers; shop's models keep last night's data
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        assert wh.sql("select count(*), max(last_load) from marts.orders").fetchone() == orders_before

    with sqlite3.connect(ws.shop_db) as shop:  # the source is back
        shop.execute("alter table order_lines rename to order_items")
    again = ws.cli("run", check=False)
    assert again.returncode == 0, again.stdout
    assert ws.last_run()["status"] == "success"
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        assert wh.sql("select count(*) from marts.orders").fetchone()[0] > orders_before[0]


def _crm(tmp_path: Path) -> tuple[SourceSpec, Settings]:
    configure_dlt()
    spec = SourceSpec(
        name="crm",
        kind="database",
        description="",
        demo=False,
        tables=(TableSpec("customers", ("customer_id",), "updated_at", "merge", "none"),),
    )
    settings = Settings(
        tmp_path,
        tmp_path / "wh.duckdb",
        tmp_path / "t",
        demo=False,
        demo_seed=1,
        source_attempts=3,
        source_backoff=0.01,
    )
    return spec, settings


def test_a_transient_failure_is_retried_then_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection refused: retried with backoff, DUSK_SOURCE_ATTEMPTS times, then failed."""
    spec, settings = _crm(tmp_path)
    monkeypatch.setenv("SOURCES__CRM__CREDENTIALS", "postgresql://postgres@127.0.0.1:1/nowhere")
    pauses: list[float] = []
    result = ingest_with_retries(spec, settings, target(settings), sleep=pauses.append)
    assert not result.ok and result.transient and result.attempts == 3
    assert "refused" in (result.error or "")
    assert len(pauses) == 2 and pauses[0] < pauses[1] * 2  # exponential, with jitter


def test_a_permanent_failure_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong user cannot get better by trying again: one attempt, reported at once."""
    spec, settings = _crm(tmp_path)
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError as exc:
        _service_missing(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    monkeypatch.setenv("SOURCES__CRM__CREDENTIALS", "postgresql://dusk_nobody@127.0.0.1:5432/postgres")
    result = ingest_with_retries(spec, settings, target(settings))
    assert not result.ok and not result.transient and result.attempts == 1
    assert "dusk_nobody" in (result.error or "")


def test_the_ledger_keeps_every_run(workspace: Workspace) -> None:
    """Two runs, the second with a quarantined row: the ledger holds both runs with their steps,
    rows per table, dbt nodes, quarantine counts and freshness, and dbt knows it as a source."""
    ws = workspace
    ws.cli("run")
    with sqlite3.connect(ws.shop_db) as shop:
        shop.execute("update order_items set quantity = -3, updated_at = '2026-01-01 00:00:00' where order_item_id = 7")
    ws.cli("run")
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        runs = wh.sql("select run_id, status from dusk_ledger.runs order by started_at").fetchall()
        assert [r[1] for r in runs] == ["success", "success"]
        first, second = (r[0] for r in runs)
        assert {p.stem for p in (ws.data_dir / "runs").glob("2*.json")} == {first, second}
        steps = wh.sql(f"select step, target, status from dusk_ledger.steps where run_id = '{second}'").fetchall()
        assert ("ingest", "shop", "ok") in steps and ("dbt", "build, freshness, docs", "ok") in steps
        loaded = wh.sql(
            "select run_id, loaded from dusk_ledger.source_tables where table_name = 'orders' order by run_id"
        ).fetchall()
        assert loaded[0][1] > 1000 and loaded[1] == (second, 0)
        items = wh.sql(
            f"select loaded from dusk_ledger.source_tables where run_id = '{second}' and table_name = 'order_items'"
        ).fetchone()
        assert items == (1,)
        quarantine = dict(
            wh.sql(
                f"select reason, row_count from dusk_ledger.quarantine where run_id = '{second}' "
                "and table_name = 'order_items'"
            ).fetchall()
        )
        first_q = wh.sql(
            f"select coalesce(sum(row_count), 0) from dusk_ledger.quarantine where run_id = '{first}' "
            "and reason = 'non_positive_quantity'"
        ).fetchone()[0]
        assert quarantine["non_positive_quantity"] == first_q + 1
        nodes = wh.sql(
            f"select resource_type, status, count(*) from dusk_ledger.dbt_nodes where run_id = '{second}' group by 1, 2"
        ).fetchall()
        assert any(n[:2] == ("model", "success") for n in nodes)  # what the changed order item reaches
        # every test has its row: run and passed, or left unchanged (nothing it reads changed)
        assert sum(n[2] for n in nodes if n[0] == "test" and n[1] in PASSED) > 100
        assert any(n[:2] == ("test", "unchanged") for n in nodes)
        assert wh.sql(f"select count(*) from dusk_ledger.freshness where run_id = '{second}'").fetchone()[0] >= 7
        orders_rows = wh.sql(
            f"select rows_affected from dusk_ledger.dbt_nodes where run_id = '{first}' and name = 'orders'"
        ).fetchone()
        assert orders_rows is not None
    manifest = (ws.root / "target" / "manifest.json").read_text()
    assert '"source.dusk.ledger.runs"' in manifest
    status = ws.cli("status")
    assert status.stdout.count("success") == 2 and first in status.stdout and second in status.stdout
    assert "Failing tests and nodes: none" in status.stdout
    assert re.search(r"Quarantine: \d+ rows waiting", status.stdout)
    assert f"shop.order_items: {quarantine['non_positive_quantity']} non_positive_quantity" in status.stdout


def test_status_before_any_run_says_so(workspace: Workspace) -> None:
    out = workspace.cli("status", check=False)
    assert out.returncode == 1 and "no run yet" in out.stdout


def test_installation_options_override_their_variables(workspace: Workspace, tmp_path: Path) -> None:
    """`dusk --data-dir` and `--warehouse` win over DUSK_DATA_DIR and DUSK_WAREHOUSE (set by the
    workspace) for one command."""
    other = tmp_path / "elsewhere"
    out = workspace.cli("--data-dir", str(other), "status", check=False)
    assert out.returncode == 1 and f"No warehouse at {other / 'warehouse.duckdb'}" in " ".join(out.stdout.split())
    file = tmp_path / "other.duckdb"
    out = workspace.cli("--warehouse", str(file), "status", check=False)
    assert out.returncode == 1 and f"No warehouse at {file}" in " ".join(out.stdout.split())


def test_sources_are_ingested_in_parallel_up_to_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from dataclasses import replace

    from dusk.steps import ingest as step
    from ingestion.result import SourceResult

    active, peak, lock = [0], [0], threading.Lock()

    def fake_ingest(spec: SourceSpec, target: object, connection: object, **kwargs: object) -> SourceResult:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return SourceResult(spec.name, ok=spec.name != "b", seconds=0.2, error="boom" if spec.name == "b" else None)

    monkeypatch.setattr(step, "ingest_source", fake_ingest)
    specs = [SourceSpec(n, "database", "", False, ()) for n in ("a", "b", "c", "d", "e")]
    settings = Settings(tmp_path, tmp_path / "w.duckdb", tmp_path / "t", False, 1, source_attempts=1)
    started = time.monotonic()
    results = step.ingest(replace(settings, parallel_sources=2), target(settings), specs, {})
    assert [r.source for r in results] == ["a", "b", "c", "d", "e"]  # in the order of sources.yml
    assert [r.ok for r in results] == [True, False, True, True, True]  # one failure stops no other
    assert peak[0] == 2 and time.monotonic() - started < 0.2 * 5
    peak[0] = 0
    step.ingest(replace(settings, parallel_sources=1), target(settings), specs, {})
    assert peak[0] == 1


def test_make_clean_keeps_every_datum_and_reset_needs_confirmation(tmp_path: Path) -> None:
    """`make clean` removes only what rebuilds itself; `make reset` refuses without CONFIRM=yes,
    and even then keeps the landing folder (with its archive) and the secrets (the PII salt)."""
    data = tmp_path / "data"
    kept = ["landing/new.csv", "landing/archive/old.csv", "secrets/pii_salt"]
    state = ["warehouse.duckdb", "served.duckdb", "dlt/shop/state.json", "runs/last_run.json", "iceberg/catalog.db"]
    rebuilt = ["report/index.html", "spark/log4j2.properties"]
    for name in kept + state + rebuilt:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("x")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DUSK_")},
        "DUSK_DATA_DIR": str(data),
        "DBT_TARGET_PATH": str(tmp_path / "target"),
        "DBT_LOG_PATH": str(tmp_path / "logs"),
    }

    def make(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "-s", *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True)

    out = make("clean")
    assert out.returncode == 0, out.stderr
    assert f"removing {data / 'report'}" in out.stdout
    assert all((data / n).exists() for n in kept + state) and not any((data / n).exists() for n in rebuilt)
    out = make("reset")
    assert out.returncode == 2 and "make reset CONFIRM=yes" in out.stdout
    assert all((data / n).exists() for n in kept + state)
    out = make("reset", "CONFIRM=yes")
    assert out.returncode == 0, out.stderr
    assert f"removing {data / 'warehouse.duckdb'}" in out.stdout and "kept:" in out.stdout
    assert all((data / n).exists() for n in kept) and not any((data / n).exists() for n in state)


@pytest.mark.e2e
def test_sigterm_stops_the_night_cleanly_and_the_next_one_goes_on(workspace: Workspace) -> None:
    """A scheduler's SIGTERM while dbt builds: the run ends at once with code 1, recorded as
    ``stopped`` in the run record and the ledger, alerted, its lock released, nothing published;
    the next night succeeds."""
    log = workspace.root / "logs" / "dbt.log"
    with WebhookReceiver() as hook:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dusk", "run"],
            cwd=PROJECT_DIR,
            env={**workspace.env(), "DUSK_ALERT_WEBHOOK": f"{hook.url}/alerts"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and "START sql" in log.read_text(errors="replace"):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the night ended before dbt started"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, out
        assert hook.posts and "STOPPED" in hook.posts[0]["text"]
    record = workspace.last_run()
    assert record["status"] == "stopped" and record["stopped"] == "SIGTERM", record["error"]
    assert "stopped by SIGTERM" in record["error"] and record["published"] is None
    assert "Run STOPPED" in out
    assert (workspace.data_dir / "run.lock").read_text() == ""  # released, not left by a dead holder
    assert not (workspace.data_dir / "served.duckdb").exists()
    with duckdb.connect(str(workspace.warehouse), read_only=True) as wh:
        assert wh.execute("select status from dusk_ledger.runs").fetchall() == [("stopped",)]

    again = workspace.cli("run", check=False)
    assert again.returncode == 0, again.stdout
    assert "took over" not in again.stdout


SLEEPING_MODEL = """
import time


def model(dbt, session):
    dbt.config(materialized="table")
    time.sleep(600)  # a model that never ends: a runaway query, a lock it waits on
    return session.sql("select 1 as x")
"""


def test_a_model_that_runs_past_its_time_limit_stops_the_night_naming_it(workspace: Workspace, tmp_path: Path) -> None:
    """DUSK_MODEL_TIMEOUT: a model that sleeps is stopped after the limit, the night recorded as
    stopped with the model named, alerted, its lock released, nothing published. The project is
    a copy of this one with the sleeping model added."""
    project = project_copy(tmp_path / "project", {"models/marts/zz_sleeps.py": SLEEPING_MODEL})
    started = time.monotonic()
    with WebhookReceiver() as hook:
        out = subprocess.run(
            [sys.executable, "-m", "dusk", "run"],
            cwd=project,  # python -m imports the copy's dusk, whose project is the copy
            env={**workspace.env(), "DUSK_MODEL_TIMEOUT": "5", "DUSK_ALERT_WEBHOOK": f"{hook.url}/alerts"},
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - started < 300  # not the model's ten minutes
    record = workspace.last_run()
    assert record["status"] == "stopped" and record["published"] is None
    assert record["stopped"] == "the model time limit (DUSK_MODEL_TIMEOUT=5 s), reached by model.dusk.zz_sleeps"
    assert "make that model faster or raise the limit" in record["error"]
    assert "Run STOPPED by the model time limit (DUSK_MODEL_TIMEOUT=5 s), reached by model.dusk.zz_sleeps" in out.stdout
    assert hook.posts and "model.dusk.zz_sleeps" in hook.posts[0]["text"]
    assert (workspace.data_dir / "run.lock").read_text() == ""
    with duckdb.connect(str(workspace.warehouse), read_only=True) as wh:
        assert wh.execute("select status from dusk_ledger.runs").fetchall() == [("stopped",)]


def test_the_nights_time_limit_stops_it_cleanly(workspace: Workspace) -> None:
    """DUSK_RUN_TIMEOUT: a night that runs past it is stopped as a SIGTERM would stop it, and the
    message names the limit."""
    out = workspace.cli("run", check=False, env_extra={"DUSK_RUN_TIMEOUT": "3"})
    assert out.returncode == 1, out.stdout
    record = workspace.last_run()
    assert record["status"] == "stopped" and record["published"] is None
    assert record["error"].startswith("stopped by the time limit (DUSK_RUN_TIMEOUT=3 s) (it ran out"), record["error"]
    assert "Run STOPPED by the time limit (DUSK_RUN_TIMEOUT=3 s)" in out.stdout
    assert (workspace.data_dir / "run.lock").read_text() == ""


def test_dbt_busy_time_counts_overlapping_nodes_once() -> None:
    from datetime import datetime, timedelta

    from dusk.steps.build import busy_seconds

    t0 = datetime(2026, 1, 1)

    def at(a: float, b: float) -> tuple[datetime, datetime]:
        return t0 + timedelta(seconds=a), t0 + timedelta(seconds=b)

    # two threads: 0-4 and 1-3 overlap, 2-6 extends it, 8-9 after a gap of dbt's own work
    assert busy_seconds([at(0, 4), at(1, 3), at(2, 6), at(8, 9)]) == 7.0
    assert busy_seconds([]) == 0.0
