"""`dusk status`: the last runs, each source's freshness, failing tests and quarantine, from the
run ledger, for the on-call engineer's first look."""

from __future__ import annotations

import duckdb
from rich.console import Console
from rich.table import Table

from dusk.ledger import SCHEMA, LedgerError, open_ledger
from dusk.settings import Settings


def print_status(settings: Settings, runs: int = 5, console: Console | None = None) -> bool:
    """Print the status; False when there is no ledger yet (no run has finished)."""
    console = console or Console()
    if not settings.warehouse.exists():
        console.print(f"No warehouse at {settings.warehouse}: no run yet (make run).")
        return False
    try:
        with open_ledger(settings) as (con, where):
            if where.path != settings.warehouse:
                console.print(f"[yellow]A run holds the warehouse: showing the {where.note}, {where.path}[/yellow]")
            return _print(con, runs, console)
    except LedgerError as exc:
        console.print(str(exc))
        return False


def _print(con: duckdb.DuckDBPyConnection, runs: int, console: Console) -> bool:
    """The status from an open ledger connection."""
    found = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = 'runs'", [SCHEMA]
    ).fetchone()
    last = con.execute(f"select max(run_id) from {SCHEMA}.runs").fetchone() if found and found[0] else None
    if not last or last[0] is None:
        console.print("No run in the ledger yet (make run).")
        return False
    last_id = last[0]
    table = Table(title=f"Last {runs} runs", title_justify="left")
    for col in ("run", "status", "seconds", "failed sources", "error"):
        table.add_column(col)
    for rid, status, seconds, failed, error in con.execute(
        f"select run_id, status, seconds, failed_sources, error from {SCHEMA}.runs order by run_id desc limit ?",
        [runs],
    ).fetchall():
        colour = {"success": "green", "partial": "yellow"}.get(status, "red")
        table.add_row(rid, f"[{colour}]{status}[/{colour}]", f"{seconds:.1f}", failed or "", (error or "")[:80])
    console.print(table)

    sources = Table(title="Sources (last run)", title_justify="left")
    for col in ("source", "status", "attempts", "rows loaded", "last loaded by a run"):
        sources.add_column(col)
    for source, status, attempts, loaded, last_ok in con.execute(
        f"""
        select s.target, s.status, s.attempts,
            (select sum(t.loaded) from {SCHEMA}.source_tables t where t.run_id = s.run_id and t.source = s.target),
            (select max(o.run_id) from {SCHEMA}.steps o where o.target = s.target and o.status = 'ok')
        from {SCHEMA}.steps s where s.run_id = ? and s.step = 'ingest' order by 1
        """,
        [last_id],
    ).fetchall():
        sources.add_row(source, status, str(attempts), f"{int(loaded or 0):,}", last_ok or "never")
    console.print(sources)

    stale = con.execute(
        f"select source, table_name, status from {SCHEMA}.freshness where run_id = ? and status != 'pass'",
        [last_id],
    ).fetchall()
    console.print(
        "Freshness: every source table fresh"
        if not stale
        else "Freshness: " + ", ".join(f"{s}.{t} {st}" for s, t, st in stale)
    )
    failing = con.execute(
        f"select name, status, failures, failures_table from {SCHEMA}.dbt_nodes "
        "where run_id = ? and status in ('fail', 'error', 'warn') order by name",
        [last_id],
    ).fetchall()
    console.print(f"Failing tests and nodes: {len(failing) or 'none'}")
    for name, status, failures, kept in failing:
        console.print(f"  [red]{status}[/red] {name}" + (f" ({failures} rows in {kept})" if kept else ""))
    quarantine = con.execute(
        f"select source, table_name, reason, row_count from {SCHEMA}.quarantine where run_id = ? order by 1, 2, 3",
        [last_id],
    ).fetchall()
    console.print(f"Quarantine: {sum(q[3] for q in quarantine)} rows waiting")
    for source, table_name, reason, count in quarantine:
        console.print(f"  {source}.{table_name}: {count} {reason}")
    findings = con.execute(
        f"select check_name, severity, target, message from {SCHEMA}.findings where run_id = ? order by 1, 3",
        [last_id],
    ).fetchall()
    console.print(f"Monitoring: {len(findings) or 'no'} finding(s)")
    for check, severity, target, message in findings:
        console.print(f"  [{'red' if severity == 'error' else 'yellow'}]{check} {severity}[/] {target}: {message}")
    return True
