"""`dusk status`: the last runs, each source's freshness, failing tests and quarantine, from the
run ledger, for the on-call engineer's first look."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dusk import ledger
from dusk.ledger import LedgerError, open_ledger
from dusk.present import ledger_problems
from dusk.settings import Settings
from dusk.warehouse import Connection, open_warehouse


def print_status(settings: Settings, runs: int = 5, console: Console | None = None) -> bool:
    """Print the status; False when there is no ledger yet (no run has finished)."""
    console = console or Console()
    if not open_warehouse(settings).exists():
        console.print(f"No warehouse at {settings.warehouse_label}: no run yet (make run).")
        return False
    try:
        with open_ledger(settings) as (con, where):
            if not where.is_warehouse:
                console.print(f"[yellow]A run holds the warehouse: showing the {where.note}, {where.where}[/yellow]")
            return _print(con, runs, console)
    except LedgerError as exc:
        console.print(str(exc))
        return False


def _print(con: Connection, runs: int, console: Console) -> bool:
    """The status from an open ledger connection."""
    if not ledger.has_runs(con):
        console.print("No run in the ledger yet (make run).")
        return False
    recent = ledger.recent_runs(con, runs)
    last_id = recent[0][0]
    table = Table(title=f"Last {runs} runs", title_justify="left")
    for col in ("run", "status", "seconds", "failed sources", "error"):
        table.add_column(col)
    for rid, status, seconds, failed, error in recent:
        colour = {"success": "green", "partial": "yellow"}.get(status, "red")
        table.add_row(rid, f"[{colour}]{status}[/{colour}]", f"{seconds:.1f}", failed or "", (error or "")[:80])
    console.print(table)

    sources = Table(title="Sources (last run)", title_justify="left")
    for col in ("source", "status", "attempts", "rows loaded", "last loaded by a run"):
        sources.add_column(col)
    ingested = ledger.sources_of(con, last_id)
    for source, status, attempts, loaded, last_ok in ingested:
        sources.add_row(source, status, str(attempts), f"{int(loaded or 0):,}", last_ok or "never")
    console.print(sources)

    stale = [f for f in ledger.freshness_of(con, last_id) if f[2] != "pass"]
    console.print(
        "Freshness: every source table fresh"
        if not stale
        else "Freshness: " + ", ".join(f"{s}.{t} {st}" for s, t, st in stale)
    )
    failing = ledger.failing_of(con, last_id)
    findings = ledger.findings_of(con, last_id)
    console.print(f"Failing tests and nodes: {len(failing) or 'none'}")
    for line in ledger_problems(recent[0], ingested, failing, stale, findings):
        colour = "red" if line.level == "error" else "yellow"
        console.print(f"  [{colour}]{escape(line.render())}[/{colour}]")
    quarantine = ledger.quarantine_of(con, last_id)
    console.print(f"Quarantine: {sum(q[3] for q in quarantine)} rows waiting")
    for source, table_name, reason, count in quarantine:
        console.print(f"  {source}.{table_name}: {count} {reason}")
    console.print(f"Monitoring: {len(findings) or 'no'} finding(s)")
    return True
