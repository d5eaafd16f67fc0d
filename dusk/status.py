"""`dusk status`: the last runs, each source's freshness, failing tests and quarantine, from the
run ledger, for the on-call engineer's first look."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dusk import ledger
from dusk.ledger import LedgerError, open_ledger
from dusk.lock import live_holder
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


def check(settings: Settings, now: datetime | None = None) -> tuple[bool, str]:
    """The dead-man's switch (``dusk status --check``): (healthy, one line). Unhealthy when no
    night was published within the SLA (DUSK_SLA_HOURS), the last run failed, was killed or
    stopped, a run row is left ``running`` with no live run behind it, a run has held the lock for
    longer than the SLA, or the ledger cannot be read."""
    now = now or datetime.now(UTC)
    sla = timedelta(hours=settings.monitor.sla_hours)
    holder = live_holder(settings.data_dir)
    problems = []
    if holder is not None:
        since = datetime.fromisoformat(str(holder.get("started_at")))
        if now - since > sla:
            problems.append(
                f"STUCK: PID {holder.get('pid')} has held the run lock since {holder.get('started_at')}, longer "
                f"than the SLA of {settings.monitor.sla_hours:g} h: every night since was locked out"
            )
    if not open_warehouse(settings).exists():
        return False, f"NO RUN: no warehouse at {settings.warehouse_label}: no night has run yet"
    try:
        with open_ledger(settings) as (con, _):
            runs = ledger.run_clock(con, 200) if ledger.has_runs(con) else []
    except Exception as exc:  # a server down, a broken file: the switch must say so, not crash
        return False, f"UNREADABLE: the run ledger cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    if not runs:
        return False, "NO RUN: the ledger holds no run yet"
    latest_id, latest, _, _, error = runs[0]
    if latest == "running" and holder is None:
        problems.append(f"KILLED: run {latest_id} is left running with no live run behind it (killed?)")
    elif latest not in ("success", "partial", "running"):
        failing = next((i for i, r in enumerate(runs) if r[1] in ("success", "partial")), len(runs))
        problems.append(
            f"FAILING: the last {failing} run(s) did not succeed; {latest_id} {latest}: {(error or '')[:160]}"
        )
    published = next((r for r in runs if r[1] in ("success", "partial")), None)
    if published is None:
        problems.append("STALE: no night was ever published")
    else:
        run_id, status, started_at, seconds, _ = published
        ended = _utc(started_at) + timedelta(seconds=float(seconds or 0))
        age = (now - ended).total_seconds() / 3600
        if now - ended > sla:
            problems.append(
                f"STALE: the last published night ({run_id}, {status}) ended {age:.1f} h ago, "
                f"over the SLA of {settings.monitor.sla_hours:g} h"
            )
        elif not problems:
            return True, (
                f"OK: the last published night ({run_id}, {status}) ended {age:.1f} h ago "
                f"(SLA {settings.monitor.sla_hours:g} h)"
            )
    return False, "; ".join(problems)


def _utc(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
