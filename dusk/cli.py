"""The command line: ``python -m dusk <command>`` (also installed as ``dusk``).

Thin commands over the night and its readers; options are defined once in :mod:`dusk.params`,
and :func:`main` is the one place that turns a failure into an exit code.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from dusk import params
from dusk.settings import PROD, PROJECT_DIR, Settings

if TYPE_CHECKING:
    from dusk.record import RunResult
    from ingestion.declaration import SourceSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Nightly ELT: dlt sources -> dbt -> docs.")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
"""A usage error: a bad option, or a declaration that names what to fix."""
EXIT_PARTIAL = 3
"""Some sources failed; everything that does not depend on them was built and passed."""
EXIT_LOCKED = 4
"""Another run holds the lock."""

EXIT_CODES = {"success": EXIT_OK, "partial": EXIT_PARTIAL}
"""A night's status -> the exit code (anything else: EXIT_FAILED)."""


class _Overrides:
    """The installation options given on the command line (None: the environment's setting)."""

    data_dir: Path | None = None
    warehouse: Path | None = None
    target: str | None = None
    env: str | None = None
    sources_file: Path | None = None
    demo: bool | None = None


_overrides = _Overrides()


@app.callback()
def _installation(
    data_dir: params.DataDir = None,
    warehouse: params.WarehousePath = None,
    target: params.Target = None,
    env: params.Env = None,
    sources_file: params.SourcesFile = None,
    demo: params.Demo = None,
) -> None:
    """Nightly ELT: dlt sources -> dbt -> docs."""
    _overrides.data_dir, _overrides.warehouse, _overrides.target = data_dir, warehouse, target
    _overrides.env = env
    _overrides.sources_file, _overrides.demo = sources_file, demo


def settings() -> Settings:
    """The installation's settings: the environment's, with the command line's overrides."""
    s = Settings.from_env(
        data_dir=_overrides.data_dir, warehouse=_overrides.warehouse, target=_overrides.target, env=_overrides.env
    )
    if _overrides.sources_file is not None:
        s = replace(s, sources_file=_absolute(_overrides.sources_file))
    if _overrides.demo is not None:
        s = replace(s, demo=_overrides.demo)
    return s


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else Path.cwd() / path


class _OneLine(logging.Formatter):
    """A log record on the terminal as one line: its traceback is left to the run's log file (the
    summary names each problem and what to do; ``--verbose`` shows the tracebacks too)."""

    def format(self, record: logging.LogRecord) -> str:
        kept = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = kept
        return line + (" (traceback in the run's log)" if kept[0] else "")


def _logging(verbose: bool) -> None:
    """The terminal gets warnings, one line each (everything, tracebacks included, with
    --verbose); the run's log file gets INFO with tracebacks."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    layout = "%(asctime)s %(levelname)s %(name)s %(message)s"
    handler.setFormatter(logging.Formatter(layout) if verbose else _OneLine(layout))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


@app.command()
def run(
    select: params.Select = None,
    source: params.Source = None,
    full_refresh: params.FullRefresh = False,
    full: params.Full = False,
    defer: params.Defer = False,
    verbose: params.Verbose = False,
) -> None:
    """Ingest every source, build and test what tonight's changes reach (everything with --full),
    publish it to readers if it passed, generate the docs and the report, alert, print a summary.

    Exit codes: 0 success; 1 failed; 2 usage; 3 partial (some sources failed, everything else
    built, passed and was published); 4 locked (another run is in progress).
    """
    from dusk.record import DEFER_SELECT, Plan

    if defer and settings().env == PROD:
        raise typer.BadParameter("--defer reads prod's data from another environment: add --env dev (or ci)")
    chosen = tuple(select or ()) or ((DEFER_SELECT,) if defer else ())
    _night(Plan(sources=tuple(source or ()), select=chosen, full_refresh=full_refresh, full=full, defer=defer), verbose)


@app.command()
def backfill(
    start: params.Start, end: params.End, source: params.Source = None, verbose: params.Verbose = False
) -> None:
    """Re-extract the rows whose cursor lies in [START, END] from database and API sources
    (default: all of them), merge them on their keys, and rebuild and test what they feed
    (microbatch models: those days). The incremental cursors do not move, so the next nightly
    goes on where it was; running the same backfill twice changes nothing. Same exit codes as
    run."""
    from dusk.record import Plan

    if end < start:
        raise typer.BadParameter(f"--end {end:%Y-%m-%d} is before --start {start:%Y-%m-%d}")
    _night(Plan(sources=tuple(source or ()), backfill=(start.date(), end.date())), verbose)


def _night(plan: object, verbose: bool) -> None:
    _logging(verbose)
    s = settings()
    result = locked_night(s, plan)
    _exit(EXIT_CODES.get(result.status, EXIT_FAILED))


def locked_night(s: Settings, plan: object) -> RunResult:
    """One night under the run lock (:class:`dusk.lock.Locked` when another run holds it), its
    summary printed. A stopped night, or one that gave up a source, ends the process here: a thread
    still held by a source or a dbt node cannot be waited for."""
    from dusk.lock import run_lock

    with run_lock(s.data_dir) as lock:  # before the heavy imports: a locked-out run exits at once
        from dusk.night import run as run_night
        from dusk.progress import RunProgress
        from dusk.record import Plan
        from dusk.summary import print_summary

        assert isinstance(plan, Plan)
        if lock.took_over:
            typer.echo(
                f"took over the lock of a run that died (PID {lock.took_over.get('pid')}, "
                f"started {lock.took_over.get('started_at')}); this run finishes what it left"
            )
        with RunProgress() as progress:

            def abandoned(result: RunResult) -> None:  # a stopped step that did not let go
                progress.progress.stop()
                lock.vacate()
                _end_now(s, result)

            result = run_night(s, progress=progress, plan=plan, on_abandoned=abandoned)
    if result.stopped is not None or any(r.abandoned for r in result.sources):
        _end_now(s, result)  # recorded, alerted, lock released: end now, not after a source's thread
    print_summary(s, result)
    return result


def _exit(code: int) -> NoReturn:
    """End a night's process after its exit handlers (dbt-duckdb's closes its connection, and
    DuckDB then checkpoints the warehouse; logging flushes and closes its files), without
    Python's teardown: freeing every object of the night, one by one, took ~1.5 s at 1x and at
    100x the demo alike (measured), for nothing."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _end_now(s: Settings, result: RunResult) -> NoReturn:
    """Print the summary of a stopped night, or of one that gave up a source, and end the process
    at once: a thread still held by a source or a dbt node is not waited for."""
    from dusk.summary import print_summary

    print_summary(s, result)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(EXIT_CODES.get(result.status, EXIT_FAILED))


@app.command()
def simulate(days: params.Days = 1) -> None:
    """Advance the demo shop by DAYS days (creating it first if needed)."""
    _logging(False)
    from dusk.demo import simulate as advance
    from dusk.demo.shop import TABLES
    from ingestion.declaration import load_sources

    s = settings()
    for day, feeds in advance(s, load_sources(s.sources_file), days):
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


@app.command("diff")
def diff_command(show: params.Shown = 40) -> None:
    """Compare this environment's build with what prod's readers have, relation by relation: rows
    added, removed and changed (by each relation's unique key), values changed per column, and
    each relation's gate (meta.diff). dusk --env dev diff after dusk --env dev run --defer shows
    what a change would do to prod's data; in prod, what the next publish would change. Exit 1
    when a relation is past a gate of severity error."""
    from rich.console import Console
    from rich.markup import escape

    from dusk.steps.diff import DiffUnavailable, compare_environment, gate_findings
    from dusk.summary import print_diff

    _logging(False)
    s = settings()
    try:
        diffs = compare_environment(s)
    except DiffUnavailable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_FAILED) from None
    console = Console()
    print_diff(diffs, console, show)
    findings = gate_findings(diffs)
    for f in findings:
        console.print(f"[{'red' if f.severity == 'error' else 'yellow'}]{escape(f.target)}: {escape(f.message)}[/]")
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def status(runs: params.Runs = 5, check_only: params.Check = False) -> None:
    """The last runs, each source's last load, freshness, failing tests, quarantine and monitoring
    findings, from the run ledger (read-only; while a run holds the warehouse, from the served
    file, which holds the ledger up to the last published night). With --check: the dead-man's
    switch, one line, exit 1 when nights stopped, fail, or are stuck or locked out."""
    _logging(False)
    from dusk.status import check, print_status

    if check_only:
        healthy, line = check(settings())
        typer.echo(line)
        raise typer.Exit(EXIT_OK if healthy else EXIT_FAILED)
    if not print_status(settings(), runs=runs):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def report(open_it: params.OpenReport = False) -> None:
    """Write the static HTML report (runs over time, rows per table, durations, tests, quarantine,
    freshness, monitoring) from the run ledger to <data dir>/report/index.html; every run also
    writes it."""
    _logging(False)
    from dusk.steps.report import write_report

    path = write_report(settings())
    typer.echo(f"Report: {path}")
    if open_it:
        import webbrowser

        webbrowser.open(path.as_uri())


@app.command("watch")
def watch_landing(interval: params.Interval = 30.0, max_runs: params.MaxRuns = None) -> None:
    """Run the night whenever a new or changed file has landed (and stayed unchanged for one
    poll) in the landing folder of a files source. Each run is `dusk run`, with its lock, its
    exit code and its alerts; Ctrl-C stops watching."""
    _logging(False)
    from dusk.watch import watch
    from ingestion.declaration import load_sources

    s = settings()
    try:
        code = watch(load_sources(s.sources_file), s, interval, max_runs=max_runs, echo=typer.echo)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK) from None
    raise typer.Exit(code)


@app.command("serve")
def serve_nights(
    schedule: params.Schedule = None,
    now: params.Now = False,
    nights: params.Nights = None,
    verbose: params.Verbose = False,
) -> None:
    """Run the night on a schedule in this one process (instead of cron starting `dusk run` each
    night): each night is `dusk run`'s, with its lock, ledger, alerts and summary, but only the
    first pays for loading Python, dlt and dbt. SIGTERM or Ctrl-C between nights ends it (exit 0);
    during a night they stop the night, as for `dusk run`, and end the process with its exit code."""
    _logging(verbose)
    from dusk.serve import DEFAULT_SCHEDULE, ScheduleError, Shutdown, next_due, serve, shutdown_on_sigterm

    cron = schedule or DEFAULT_SCHEDULE
    try:
        next_due(cron, datetime.datetime.now().astimezone())
    except ScheduleError as exc:
        raise typer.BadParameter(str(exc), param_hint="--schedule") from None

    try:
        with shutdown_on_sigterm():
            code = serve(cron, scheduled_night, nights=nights, now=now, echo=typer.echo)
    except KeyboardInterrupt as exc:
        typer.echo(f"{'SIGTERM' if isinstance(exc, Shutdown) else 'Ctrl-C'} between nights: the server ends")
        _exit(EXIT_OK)
    _exit(code)


def scheduled_night() -> int | None:
    """A night of `dusk serve`: `dusk run`'s, its settings read again; its exit code, or None when
    another run holds the lock."""
    from dusk.lock import Locked
    from dusk.record import Plan

    try:
        result = locked_night(settings(), Plan())
    except Locked as exc:
        typer.echo(str(exc))
        return None
    return EXIT_CODES.get(result.status, EXIT_FAILED)


@app.command("pii-salt")
def pii_salt() -> None:
    """Put the PII salt (DUSK_PII_SALT, else the generated data/secrets/pii_salt) into the warehouse,
    so `dbt build` works with the plain dbt CLI; `run` does it itself."""
    _logging(False)
    from dusk.warehouse import ensure_salt, open_warehouse, read_salt

    s = settings()
    with open_warehouse(s).connect() as con:
        stored = ensure_salt(con, read_salt(s))
    typer.echo(f"PII salt {'stored in' if stored else 'already in'} {s.warehouse_label} (dusk_private.pii_salt)")


@app.command("env")
def dbt_env() -> None:
    """Print the environment the runner gives dbt (the target, the warehouse, and on Spark the
    session's configuration), as shell exports, for the plain dbt CLI:
    eval "$(python -m dusk --target spark env)" && dbt build --target spark. Secrets are left out:
    export them yourself."""
    import shlex

    from dusk.settings import SECRET_NAME, runtime_environment, secret_values

    secrets = secret_values()
    for key, value in sorted(runtime_environment(settings()).items()):
        if SECRET_NAME.search(key) or any(secret in value for secret in secrets):
            typer.echo(f"# {key}: a secret, not printed")
        else:
            typer.echo(f"export {key}={shlex.quote(value)}")


@app.command()
def migrate(to: params.MigrateTo) -> None:
    """Move this installation's warehouse to another engine (DuckDB to an empty PostgreSQL
    database, DuckDB or PostgreSQL to an empty Iceberg catalog and lake for Spark): raw data with
    dlt's state (cursors, CDC positions, the file ledger), snapshot history, the run ledger and
    the PII salt, each table compared with its copy. Marts and views are rebuilt by the next night
    there. Then set DUSK_TARGET to the new engine."""
    _logging(False)
    from dusk.lock import run_lock
    from dusk.migrate import migrate as move

    s = settings()
    with run_lock(s.data_dir, command="migrate"):
        moved = move(s, to)
    rows = sum(moved.tables.values())
    typer.echo(f"Moved {len(moved.tables)} tables ({rows:,} rows) to {moved.where} in {moved.seconds:.1f}s")
    typer.echo(f"Every table equals its copy. Set DUSK_TARGET={to} for the next runs; {moved.left} is left as it was.")
    if to == "spark":
        typer.echo(
            "dlt's working folders of the moved sources were cleared: the next night takes dlt's state from the lake."
        )


@app.command()
def resync(source: params.SourceName, table: params.ResyncTables = None) -> None:
    """Re-extract a database or API source's tables (--table, repeatable; default all) in full at
    the next run: their incremental cursors are forgotten, every row is read again and merged on
    its key (rows key-diff marked deleted stay). After a repair at the source, or a new column
    whose history you want."""
    _logging(False)
    from dusk.lock import run_lock
    from dusk.warehouse import open_warehouse
    from ingestion.declaration import load_sources
    from ingestion.resync import resync as forget

    s = settings()
    specs = load_sources(s.sources_file)
    if source not in specs:
        raise typer.BadParameter(f"no source {source!r} in {s.sources_file or 'ingestion/sources.yml'}")
    with run_lock(s.data_dir, command="resync"):
        from dusk.settings import apply_runtime_environment

        apply_runtime_environment(s)
        names = forget(specs[source], open_warehouse(s).target(), list(table or ()) or None)
    typer.echo(f"{source}: {', '.join(names)} will be read in full by the next run (dusk run --source {source} now)")


@app.command()
def replay(
    source: params.SourceName,
    table: params.ResyncTables = None,
    export: params.ReplayExport = None,
    fixes: params.ReplayFrom = None,
) -> None:
    """Feed a files or stream source's dead letters (rows and messages kept in
    raw_<source>._quarantine) back through the same checks, after a fix to sources.yml or to the
    records themselves (--export, correct, --from). Each is marked replayed, still bad or
    superseded in raw_<source>._replays; replayed rows reach the marts with the next night.
    Exits 3 when some are still bad."""
    _logging(False)
    from dusk.lock import run_lock
    from dusk.record import format_run_id
    from dusk.settings import apply_runtime_environment
    from dusk.warehouse import open_warehouse, table_names
    from ingestion import replay as dead_letters
    from ingestion.declaration import load_sources

    s = settings()
    specs = load_sources(s.sources_file)
    if source not in specs:
        raise typer.BadParameter(f"no source {source!r} in {s.sources_file or 'ingestion/sources.yml'}")
    spec, tables = specs[source], list(table or ()) or None
    with run_lock(s.data_dir, command="replay"):
        apply_runtime_environment(s)
        warehouse = open_warehouse(s)
        target = warehouse.target()
        with warehouse.connect() as con:
            letters = dead_letters.pending(con, spec, table_names(con, spec.dataset), tables)
            if export is not None:
                dead_letters.export(letters, export)
                typer.echo(f"{source}: {len(letters)} pending dead letter(s) written to {export}")
                return
            if fixes is not None:
                letters = dead_letters.corrected(letters, fixes)
            if not letters:
                typer.echo(f"{source}: no pending dead letters")
                return
            replay_id = format_run_id(datetime.datetime.now(datetime.UTC))
            planned = dead_letters.plan(spec, target, con, letters, replay_id)
        dead_letters.load(spec, target, planned)
    result = planned.result
    for name in sorted({t for t, _ in result.outcomes}):
        counts = ", ".join(
            f"{result.outcomes[(name, o)]} {o}"
            for o in (dead_letters.REPLAYED, dead_letters.STILL_BAD, dead_letters.SUPERSEDED)
        )
        typer.echo(f"{source}.{name}: {counts} (replay {result.replay_id})")
    for ident, reason in result.still_bad:
        typer.echo(f"  still bad: {ident}: {reason}")
    typer.echo(f"Outcomes are in {spec.dataset}._replays; the next night builds the replayed rows (dusk run).")
    if result.still_bad:
        raise SystemExit(EXIT_PARTIAL)


@app.command()
def erase(
    source: params.EraseSource,
    table: params.EraseTable,
    key: params.EraseKey = None,
    keys: params.EraseKeys = None,
) -> None:
    """Forget a person (GDPR/CCPA erasure): the subject's rows in raw (dead letters included),
    snapshots and the served copy are deleted, everything else downstream is rebuilt from raw,
    the DuckDB files are rewritten and dlt's load packages of the source removed; the ledger
    records the subject by the salted hash of its key. Erase it in the source system too."""
    _logging(False)
    from dusk.erase import erase as forget
    from dusk.erase import subjects_from
    from dusk.lock import run_lock
    from dusk.settings import apply_runtime_environment
    from ingestion.declaration import load_sources

    s = settings()
    specs = load_sources(s.sources_file)
    if source not in specs:
        raise typer.BadParameter(f"no source {source!r} in {s.sources_file or 'ingestion/sources.yml'}")
    subjects = subjects_from(list(key or ()), keys)
    # dbt records its process's command line in target/ and its log: the keys must not be there
    sys.argv = [sys.argv[0], "erase", "--source", source, "--table", table]
    with run_lock(s.data_dir, command="erase"):
        apply_runtime_environment(s)
        erased = forget(s, specs[source], table, subjects)
    where = "; ".join(f"{what}: {rows}" for what, rows in erased.scope.items())
    typer.echo(f"Erased {len(erased.keys)} key(s) of {source}.{table} (erase {erased.erase_id}): {where}")
    typer.echo(f"Rebuilt from raw: {', '.join(erased.rebuilt) or 'nothing'}")
    if erased.rewritten:
        typer.echo(f"Rewritten without the deleted rows' bytes: {', '.join(erased.rewritten)}")
    for again in erased.again:
        typer.echo(f"  erased before, its copies erased again: {again}")
    for subject in erased.not_found:
        typer.echo(f"  not found: {subject}")
    typer.echo(
        "Recorded in dusk_ledger.erasures by the salted hash of each key. Erase the subject in the source system "
        "too: a database row still there is read back by the next full read."
    )


@app.command()
def prune(dry_run: params.DryRun = False) -> None:
    """Remove what is older than its retention (DUSK_KEEP_*_DAYS): run records and logs, dlt's
    completed load packages, archived landing files and ledger history. Every night does it
    after it is recorded; --dry-run says what would go."""
    _logging(False)
    from dusk.lock import run_lock
    from dusk.settings import apply_runtime_environment
    from dusk.steps.prune import prune as prune_now
    from dusk.warehouse import open_warehouse
    from ingestion.declaration import load_sources

    s = settings()
    specs = load_sources(s.sources_file)
    with run_lock(s.data_dir, command="prune"):
        apply_runtime_environment(s)
        with open_warehouse(s).connect() as con:
            pruned = prune_now(s, specs, con, dry_run=dry_run)
    typer.echo(f"{'Would prune' if dry_run else 'Pruned'}: {pruned.describe()}")


generate_app = typer.Typer(
    no_args_is_help=True, help="Write what sources.yml declares: dbt's sources, and staging models to start from."
)
app.add_typer(generate_app, name="generate")


@generate_app.command("sources")
def generate_sources(check: params.GenerateCheck = False) -> None:
    """Write models/staging/<source>/_<source>__sources.yml from sources.yml: dbt's sources, their
    tables, key tests, declared column types and meta; what else each file holds is kept. A night
    does this itself when a file is stale."""
    from dusk import generate
    from ingestion.declaration import load_sources

    s = settings()
    specs = load_sources(s.sources_file)
    stale = [g.path for g in generate.generate(specs) if not g.current]
    stray = generate.stray(specs)
    for path in stray:
        typer.echo(f"{path.relative_to(PROJECT_DIR)}: no source of that name in sources.yml", err=True)
    if check:
        for path in stale:
            typer.echo(f"{path.relative_to(PROJECT_DIR)} is stale: run `dusk generate sources`", err=True)
        if stale or stray:
            raise typer.Exit(EXIT_FAILED)
        typer.echo(f"dbt's sources are as sources.yml declares them ({len(specs)} sources)")
        return
    for path in generate.write(specs):
        typer.echo(f"wrote {path.relative_to(PROJECT_DIR)}")
    if not stale:
        typer.echo(f"dbt's sources are as sources.yml declares them ({len(specs)} sources)")
    if stray:
        raise typer.Exit(EXIT_FAILED)


new_app = typer.Typer(no_args_is_help=True, help="Start something new: a source declaration.")
app.add_typer(new_app, name="new")

TEMPLATES = {
    "database": """  {name}:
    kind: database
    description: (what it is, who owns it)
    # the connection: SOURCES__{upper}__CREDENTIALS=postgresql://user@host:5432/db (or mysql+pymysql://,
    # sqlite:///path) in the environment, or [sources.{name}] credentials in .dlt/secrets.toml.
    # `dusk discover {name}` then proposes its tables, keys and cursors.
    tables:
      # orders:
      #   primary_key: order_id          # a list for a composite key
      #   cursor: updated_at             # rows whose cursor moved are read again
      #   write_disposition: merge
      #   deletes: key_diff              # or cdc (PostgreSQL), or none
""",
    "api": """  {name}:
    kind: api
    description: (what it is, who owns it)
    api:
      base_url: https://api.example.com/v1   # a token: SOURCES__{upper}__TOKEN
      page_size: 100
    tables:
      # payments:
      #   path: payments
      #   primary_key: payment_id
      #   cursor: updated_at
      #   cursor_param: updated_since
      #   columns:
      #     amount: decimal(12,2)
""",
    "files": """  {name}:
    kind: files
    description: (what it is, who owns it)
    files:
      path: data/landing/{name}   # the landing folder; `dusk discover {name}` proposes its tables
      archive: true
    tables:
      # spend:
      #   pattern: "spend_*.csv*"
      #   primary_key: [spend_date, channel]
      #   columns:
      #     spend_date: date
      #     amount: decimal(12,2)
""",
    "stream": """  {name}:
    kind: stream
    description: (what it is, who owns it)
    stream:
      servers: nats://127.0.0.1:4222
      stream: {upper}
    tables:
      # events:
      #   subject: {name}.events
      #   primary_key: event_id
      #   columns:
      #     occurred_at: timestamp
""",
}


@new_app.command("source")
def new_source(name: params.NewSourceName, kind: params.SourceKind) -> None:
    """Add a commented declaration of a new source to sources.yml (nothing is loaded until you
    fill it in)."""
    import re

    import yaml

    s = settings()
    path = s.sources_file or PROJECT_DIR / "ingestion" / "sources.yml"
    if kind not in TEMPLATES:
        typer.echo(f"--kind must be one of {', '.join(TEMPLATES)}, got {kind!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", name):
        typer.echo(f"a source's name is lower case letters, digits and _ (it names raw_{name}): {name!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    if name in ((yaml.safe_load(path.read_text()) or {}).get("sources") or {}):
        typer.echo(f"{path} already declares a source {name!r}", err=True)
        raise typer.Exit(EXIT_USAGE)
    text = path.read_text()
    path.write_text(text.rstrip("\n") + "\n\n" + TEMPLATES[kind].format(name=name, upper=name.upper()))
    typer.echo(
        f"Added source {name!r} ({kind}) to {path}. Until its tables are filled in, sources.yml is a draft "
        f"that `dusk run` refuses (naming the line); `dusk discover {name}` proposes them."
    )


@app.command("spec")
def spec_command(check: params.GenerateCheck = False) -> None:
    """Write docs/pipeline.md, the pipeline's specification, from sources.yml, the dbt project,
    the settings and the run ledger (dbt parses the project first). --check: exit 1 when the
    committed file says something else (its live blocks, settings and volumes, left out)."""
    import json

    from dusk.ledger import LedgerError, open_ledger
    from dusk.steps import spec
    from dusk.steps.build import parse
    from dusk.warehouse import open_warehouse
    from ingestion.declaration import load_sources

    _logging(False)
    s = settings()
    specs = load_sources(s.sources_file)
    _, error = parse(s)
    if error:
        typer.echo(error, err=True)
        raise typer.Exit(EXIT_FAILED)
    manifest = json.loads((s.target_path / "manifest.json").read_text())
    volume = None
    if not check and open_warehouse(s).exists():
        try:
            with open_ledger(s) as (con, _where):
                volume = spec.volumes(con)
        except LedgerError:
            volume = None
    text = spec.render(specs, manifest, s, volume, spec.runbook_of(spec.operations_doc()))
    path = PROJECT_DIR / spec.SPEC
    if check:
        if not path.exists() or spec.stale(path.read_text(), text):
            typer.echo(f"{spec.SPEC} is stale: run `dusk spec` and commit it", err=True)
            raise typer.Exit(EXIT_FAILED)
        typer.echo(f"{spec.SPEC} says what sources.yml, the dbt project and the runbook say")
        return
    typer.echo(f"{'wrote' if spec.write(path, text) else 'unchanged:'} {spec.SPEC}")


def _with_source(source: str) -> tuple[Settings, dict[str, SourceSpec]]:
    """The settings (runtime environment applied) and the declared sources, which hold ``source``
    (else the command stops, naming the ones declared)."""
    from dusk.settings import apply_runtime_environment
    from ingestion.declaration import load_sources

    _logging(False)
    s = settings()
    apply_runtime_environment(s)
    specs = load_sources(s.sources_file)
    if source not in specs:
        typer.echo(f"no source {source!r} in sources.yml (known: {', '.join(sorted(specs))})", err=True)
        raise typer.Exit(EXIT_FAILED)
    return s, specs


@generate_app.command("staging")
def generate_staging(source: params.SourceName) -> None:
    """Write the base_, stg_ and quarantine_ models of the source's tables that have none, and
    their YAML, the way the project's staging models are written (existing files are never
    overwritten). Columns: declared, else raw's, else the newest landing file's (files) or the
    source table's (database)."""
    from dusk import staging
    from dusk.demo import shop_connections
    from dusk.warehouse import column_types, open_warehouse
    from ingestion.database import credentials
    from ingestion.files.landing import landing_dir
    from ingestion.run import Connection

    s, specs = _with_source(source)
    spec = specs[source]
    held: dict[str, list[str]] = {}
    warehouse = open_warehouse(s)
    if warehouse.exists():
        with warehouse.connect() as con:
            held = {t.name: list(column_types(con, spec.dataset, t.name)) for t in spec.tables}
    url = None
    if spec.kind == "database":
        connection = shop_connections(s, specs).get(source, Connection()) if s.demo else Connection()
        try:
            url = credentials(spec, connection)
        except RuntimeError:
            url = None
    landing = landing_dir(spec, s.landing_dir, PROJECT_DIR) if spec.kind == "files" else None
    try:
        done = staging.generate_staging(spec, staging.known_columns(spec, lambda t: held.get(t, []), landing, url))
    except staging.NoColumns as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_FAILED) from None
    for path in done.written:
        typer.echo(f"wrote {path.relative_to(PROJECT_DIR)}")
    for name in done.kept:
        typer.echo(f"{name}: has staging models already, left as they are")
    for note in done.notes:
        typer.echo(note)


def _draft(s: Settings, source: str) -> tuple[SourceSpec, dict[str, SourceSpec]]:
    """The source as sources.yml declares it, or, while its declaration is still a draft (no
    tables yet, as `dusk new source` writes it), its kind and connection settings alone."""
    import yaml

    from ingestion.declaration import ConfigError, SourceSpec, load_sources

    path = s.sources_file or PROJECT_DIR / "ingestion" / "sources.yml"
    try:
        specs = load_sources(s.sources_file)
    except ConfigError:
        specs = {}
    if source in specs:
        return specs[source], specs
    entry = ((yaml.safe_load(path.read_text()) or {}).get("sources") or {}).get(source)
    if not isinstance(entry, dict) or entry.get("kind") not in TEMPLATES:
        typer.echo(f"no source {source!r} in {path}; add one with `dusk new source {source} --kind ...`", err=True)
        raise typer.Exit(EXIT_FAILED)
    kind = str(entry["kind"])
    options = tuple((entry.get(kind) or {}).items())
    return SourceSpec(name=source, kind=kind, description="", demo=False, tables=(), options=options), {}


@app.command()
def discover(source: params.SourceName, schema: params.DiscoverSchema = None) -> None:
    """Reflect a database source (tables, keys, cursor candidates, rows) or sniff a files source's
    landing folder, and print the declaration it suggests (nothing is written)."""
    import sqlalchemy as sa

    from dusk import discover as found
    from dusk.demo import shop_connections
    from dusk.settings import apply_runtime_environment
    from ingestion.database import credentials
    from ingestion.files.landing import landing_dir
    from ingestion.run import Connection

    _logging(False)
    s = settings()
    apply_runtime_environment(s)
    spec, specs = _draft(s, source)
    if spec.kind == "database":
        connection = shop_connections(s, specs).get(source, Connection()) if s.demo else Connection()
        try:
            tables = found.database(sa.make_url(credentials(spec, connection)), schema)
        except (RuntimeError, sa.exc.SQLAlchemyError) as exc:
            typer.echo(f"source {source!r} could not be reflected: {str(exc).splitlines()[0]}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
    elif spec.kind == "files":
        folder = landing_dir(spec, s.landing_dir, PROJECT_DIR)
        if not folder.is_dir():
            typer.echo(f"source {source!r}: its landing folder {folder} does not exist", err=True)
            raise typer.Exit(EXIT_FAILED)
        tables = found.landing(folder)
    else:
        typer.echo(f"source {source!r} is kind {spec.kind}: discover reads databases and landing folders", err=True)
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"# what {source} holds, as sources.yml could declare it (read it; nothing was written)")
    typer.echo(found.proposal(source, spec.kind, tables), nl=False)


cdc_app = typer.Typer(no_args_is_help=True, help="PostgreSQL change data capture: slot and publication.")
app.add_typer(cdc_app, name="cdc")


def _cdc(source: str, action: str) -> None:
    import sqlalchemy as sa

    from dusk.demo import shop_connections
    from ingestion.database import cdc, credentials
    from ingestion.run import Connection

    s, specs = _with_source(source)
    from dusk.steps.prepare import in_environment

    spec = specs[source] if s.env == PROD else in_environment(specs[source], s.env)  # its own slot
    connection = shop_connections(s, specs).get(source, Connection()) if s.demo else Connection()
    url = sa.make_url(credentials(spec, connection))
    done = cdc.setup(url, spec) if action == "setup" else cdc.drop(url, spec)
    for line in done:
        typer.echo(line)


@cdc_app.command("setup")
def cdc_setup(source: params.SourceName) -> None:
    """Create the publication of the source's `deletes: cdc` tables and its replication slot
    (idempotent; run it again after adding a CDC table)."""
    _cdc(source, "setup")


@cdc_app.command("drop")
def cdc_drop(source: params.SourceName) -> None:
    """Drop the source's replication slot and publication (PostgreSQL stops keeping WAL for it)."""
    _cdc(source, "drop")


@contextmanager
def exit_codes() -> Iterator[None]:
    """The one place failures become exit codes: a run already holding the lock is 4, a
    declaration or option that names what to fix is 2, any other refusal with a message is 1
    (the message alone, no traceback). The modules that define them are imported only when
    something failed: a locked-out run exits without loading the engines."""
    try:
        yield
    except Exception as exc:
        from dusk.lock import Locked
        from dusk.settings import SettingsError

        if isinstance(exc, Locked):
            code = EXIT_LOCKED
        elif isinstance(exc, SettingsError):
            code = EXIT_USAGE
        else:
            from dusk.erase import EraseIncomplete, EraseRefused
            from dusk.ledger import LedgerError
            from dusk.migrate import MigrateError
            from dusk.warehouse import PublishError, SaltError
            from ingestion.database.cdc import CdcError
            from ingestion.declaration import ConfigError
            from ingestion.replay import ReplayRefused
            from ingestion.resync import ResyncRefused

            refused = (
                LedgerError,
                SaltError,
                CdcError,
                PublishError,
                MigrateError,
                ResyncRefused,
                ReplayRefused,
                EraseRefused,
                EraseIncomplete,
            )
            if isinstance(exc, ConfigError):
                code = EXIT_USAGE
            elif isinstance(exc, refused):
                code = EXIT_FAILED
            else:
                raise
        typer.echo(str(exc), err=True)
        raise SystemExit(code) from None


def main() -> None:
    """Run the CLI."""
    with exit_codes():
        app(standalone_mode=True)
