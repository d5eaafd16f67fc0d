"""The command line: ``python -m dusk <command>`` (also installed as ``dusk``)."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import Annotated, Any

import typer

from dusk.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Nightly ELT: dlt sources -> dbt -> docs.")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PARTIAL = 3
"""Some sources failed; everything that does not depend on them was built and passed."""
EXIT_LOCKED = 4
"""Another run holds the lock (2 is the usage-error code of the command line)."""


def _logging(verbose: bool) -> None:
    """The terminal gets warnings (everything with --verbose); the run's log file gets INFO."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


SourceOption = Annotated[
    list[str] | None,
    typer.Option("--source", "-S", help="Ingest only this source (repeatable); dbt then builds what it feeds."),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.", envvar="DUSK_VERBOSE")]


@app.command()
def run(
    select: Annotated[
        list[str] | None,
        typer.Option("--select", "-s", help="dbt selection to build (default: everything).", envvar="DUSK_SELECT"),
    ] = None,
    source: SourceOption = None,
    full_refresh: Annotated[bool, typer.Option(help="Rebuild incremental models and seeds from scratch.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Ingest every source, build and test the warehouse, publish it to readers if it passed,
    generate the docs and the report, alert, print a summary.

    Exit codes: 0 success; 1 failed; 2 usage; 3 partial (some sources failed, everything else
    built, passed and was published); 4 locked (another run is in progress).
    """
    from dusk.pipeline import Plan

    _locked_run(Plan(sources=tuple(source or ()), select=tuple(select or ()), full_refresh=full_refresh), verbose)


@app.command()
def backfill(
    start: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="First day to re-extract (UTC).")],
    end: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="Last day to re-extract, included (UTC).")],
    source: SourceOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Re-extract the rows whose cursor lies in [START, END] from database and API sources
    (default: all of them), merge them on their keys, and rebuild and test what they feed
    (microbatch models: those days). The incremental cursors do not move, so the next nightly
    goes on where it was; running the same backfill twice changes nothing. Same exit codes as
    run."""
    from dusk.pipeline import Plan

    if end < start:
        typer.echo(f"--end {end:%Y-%m-%d} is before --start {start:%Y-%m-%d}", err=True)
        raise typer.Exit(2)
    _locked_run(Plan(sources=tuple(source or ()), backfill=(start.date(), end.date())), verbose)


def _locked_run(plan: Any, verbose: bool) -> None:
    _logging(verbose)
    from dusk.lock import Locked, run_lock
    from dusk.pipeline import run as run_pipeline
    from dusk.progress import RunProgress
    from dusk.summary import print_summary

    settings = Settings.from_env()
    try:
        with run_lock(settings.data_dir) as lock:
            if lock.took_over:
                typer.echo(
                    f"took over the lock of a run that died (PID {lock.took_over.get('pid')}, "
                    f"started {lock.took_over.get('started_at')}); this run finishes what it left"
                )
            with RunProgress() as progress:
                result = run_pipeline(settings, progress=progress, plan=plan)
    except Locked as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_LOCKED) from None
    print_summary(result)
    codes = {"success": EXIT_OK, "partial": EXIT_PARTIAL}
    raise typer.Exit(codes.get(result.status, EXIT_FAILED))


@app.command()
def simulate(
    days: Annotated[int, typer.Option(min=1, help="Days of shop activity to simulate.", envvar="DAYS")] = 1,
) -> None:
    """Advance the demo shop by DAYS days (creating it first if needed)."""
    _logging(False)
    from dusk.demo import simulate as advance
    from dusk.demo.shop import TABLES
    from ingestion.config import load_sources

    settings = Settings.from_env()
    for day, feeds in advance(settings, load_sources(), days):
        parts = [
            f"{t}: +{day.count(t, 'insert')} ~{day.count(t, 'update')} -{day.count(t, 'delete')}"
            + (f" ({n} restored)" if (n := day.count(t, "restore")) else "")
            for t in TABLES
        ]
        stream = f"{feeds.events} events" if feeds.stream_skipped is None else f"events skipped: {feeds.stream_skipped}"
        typer.echo(
            f"day {day.day}: " + ", ".join(parts) + f"; {len(day.invalid)} invalid rows; "
            f"{feeds.payments} payments, {feeds.files} files, {stream}"
        )


@app.command()
def status(
    runs: Annotated[int, typer.Option(min=1, help="How many recent runs to list.")] = 5,
) -> None:
    """The last runs, each source's last load, freshness, failing tests, quarantine and monitoring
    findings, from the run ledger (read-only; while a run holds the warehouse, from the served
    file, which holds the ledger up to the last published night)."""
    _logging(False)
    from dusk.status import print_status

    if not print_status(Settings.from_env(), runs=runs):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def report(
    open_it: Annotated[bool, typer.Option("--open", help="Open the report in the default browser.")] = False,
) -> None:
    """Write the static HTML report (runs over time, rows per table, durations, tests, quarantine,
    freshness, monitoring) from the run ledger to <data dir>/report/index.html; every run also
    writes it."""
    _logging(False)
    from dusk.ledger import LedgerError
    from dusk.report import write_report

    try:
        path = write_report(Settings.from_env())
    except LedgerError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(f"Report: {path}")
    if open_it:
        import webbrowser

        webbrowser.open(path.as_uri())


@app.command("watch")
def watch_landing(
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls of the landing folders.")] = 30.0,
    max_runs: Annotated[int | None, typer.Option(min=1, help="Stop after this many runs (default: never).")] = None,
) -> None:
    """Run the night whenever a new or changed file has landed (and stayed unchanged for one
    poll) in the landing folder of a files source. Each run is `dusk run`, with its lock, its
    exit code and its alerts; Ctrl-C stops watching."""
    _logging(False)
    from dusk.watch import watch
    from ingestion.config import load_sources

    try:
        code = watch(load_sources(), Settings.from_env(), interval, max_runs=max_runs, echo=typer.echo)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK) from None
    raise typer.Exit(code)


@app.command("pii-salt")
def pii_salt() -> None:
    """Put the PII salt (DUSK_PII_SALT, else the generated data/secrets/pii_salt) into the warehouse,
    so `dbt build` works with the plain dbt CLI; `run` does it itself."""
    _logging(False)
    from dusk.pii import SaltError, install_salt

    settings = Settings.from_env()
    try:
        stored = install_salt(settings)
    except SaltError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(f"PII salt {'stored in' if stored else 'already in'} {settings.warehouse} (dusk_private.pii_salt)")


cdc_app = typer.Typer(no_args_is_help=True, help="PostgreSQL change data capture: slot and publication.")
app.add_typer(cdc_app, name="cdc")


def _cdc(source: str, action: str) -> None:
    import sqlalchemy as sa

    from dusk.ingest import configure_dlt, credentials_for
    from ingestion.config import load_sources
    from ingestion.database import cdc

    _logging(False)
    configure_dlt()
    specs = load_sources()
    if source not in specs:
        typer.echo(f"no source {source!r} in sources.yml (known: {', '.join(sorted(specs))})", err=True)
        raise typer.Exit(EXIT_FAILED)
    url = sa.make_url(credentials_for(specs[source], Settings.from_env()))
    try:
        done = cdc.setup(url, specs[source]) if action == "setup" else cdc.drop(url, specs[source])
    except cdc.CdcError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_FAILED) from None
    for line in done:
        typer.echo(line)


@cdc_app.command("setup")
def cdc_setup(source: Annotated[str, typer.Argument(help="Source name in sources.yml.")]) -> None:
    """Create the publication of the source's `deletes: cdc` tables and its replication slot
    (idempotent; run it again after adding a CDC table)."""
    _cdc(source, "setup")


@cdc_app.command("drop")
def cdc_drop(source: Annotated[str, typer.Argument(help="Source name in sources.yml.")]) -> None:
    """Drop the source's replication slot and publication (PostgreSQL stops keeping WAL for it)."""
    _cdc(source, "drop")


def main() -> None:
    """Run the CLI."""
    app()
