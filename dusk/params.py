"""Every command-line option, defined once, each with its environment variable.

Options that set where things live or how the installation behaves (``--data-dir``,
``--warehouse``, ``--target``, ``--env``, ``--sources-file``, ``--demo/--no-demo``) override the
``DUSK_*`` variable that :class:`dusk.settings.Settings` reads (its only reader); the others are
read by the CLI itself, from the option or its variable (the way dbt-core's ``cli/params.py`` does it)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

# -- the installation (overrides of Settings) ------------------------------------------------
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where dusk keeps its state [overrides DUSK_DATA_DIR].")
]
WarehousePath = Annotated[
    Path | None, typer.Option("--warehouse", help="The DuckDB warehouse file [overrides DUSK_WAREHOUSE].")
]
Target = Annotated[
    str | None,
    typer.Option("--target", help="The warehouse engine: duckdb, postgres or spark [overrides DUSK_TARGET]."),
]
SourcesFile = Annotated[
    Path | None,
    typer.Option("--sources-file", help="The sources declaration [overrides DUSK_SOURCES_FILE]."),
]
Env = Annotated[
    str | None,
    typer.Option(
        "--env", help="The environment: prod, or dev, ci, ... each with a warehouse of its own [overrides DUSK_ENV]."
    ),
]
Demo = Annotated[
    bool | None,
    typer.Option("--demo/--no-demo", help="Create and serve the demo sources [overrides DUSK_DEMO]."),
]

# -- what a command does ------------------------------------------------------------------------
Select = Annotated[
    list[str] | None,
    typer.Option("--select", "-s", help="dbt selection to build (default: everything).", envvar="DUSK_SELECT"),
]
Source = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        "-S",
        help="Ingest only this source (repeatable); dbt then builds what it feeds.",
        envvar="DUSK_SOURCE",
    ),
]
FullRefresh = Annotated[
    bool,
    typer.Option(
        "--full-refresh", help="Rebuild incremental models and seeds from scratch.", envvar="DUSK_FULL_REFRESH"
    ),
]
Full = Annotated[
    bool,
    typer.Option(
        "--full",
        help="Build every model, snapshot and test, not only what tonight's changes reach.",
        envvar="DUSK_FULL",
    ),
]
Defer = Annotated[
    bool,
    typer.Option(
        "--defer",
        help="Outside prod: read what this run does not build from prod's published data, as of prod's last "
        "night (dbt's --defer --state); --select defaults to state:modified+ (what changed against prod).",
        envvar="DUSK_DEFER",
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.", envvar="DUSK_VERBOSE")]
Start = Annotated[
    datetime,
    typer.Option(formats=["%Y-%m-%d"], help="First day to re-extract (UTC).", envvar="DUSK_BACKFILL_START"),
]
End = Annotated[
    datetime,
    typer.Option(formats=["%Y-%m-%d"], help="Last day to re-extract, included (UTC).", envvar="DUSK_BACKFILL_END"),
]
Days = Annotated[int, typer.Option(min=1, help="Days of shop activity to simulate.", envvar="DAYS")]
Shown = Annotated[int, typer.Option("--show", min=1, help="How many changed relations to list.")]
Runs = Annotated[int, typer.Option(min=1, help="How many recent runs to list.", envvar="DUSK_STATUS_RUNS")]
OpenReport = Annotated[
    bool, typer.Option("--open", help="Open the report in the default browser.", envvar="DUSK_REPORT_OPEN")
]
Interval = Annotated[
    float,
    typer.Option(min=0.1, help="Seconds between polls of the landing folders.", envvar="DUSK_WATCH_INTERVAL"),
]
MaxRuns = Annotated[
    int | None,
    typer.Option(min=1, help="Stop after this many runs (default: never).", envvar="DUSK_WATCH_MAX_RUNS"),
]
Schedule = Annotated[
    str | None,
    typer.Option(
        help="When nights run: a cron expression in this machine's local time (default '0 2 * * *', 02:00 daily).",
        envvar="DUSK_SCHEDULE",
    ),
]
Now = Annotated[bool, typer.Option("--now", help="Run a night at once, then keep to the schedule.")]
Nights = Annotated[
    int | None,
    typer.Option(min=1, help="End after this many nights (default: never).", envvar="DUSK_SERVE_NIGHTS"),
]
Check = Annotated[
    bool,
    typer.Option(
        "--check",
        help="The dead-man's switch: one line, exit 1 when no night was published within the SLA "
        "(DUSK_SLA_HOURS), the last run failed or was killed, or a run is stuck holding the lock.",
    ),
]
ResyncTables = Annotated[
    list[str] | None, typer.Option("--table", help="A table of the source (repeatable; default: all of them).")
]
MigrateTo = Annotated[str, typer.Option("--to", help="The engine to move the warehouse to: postgres or spark.")]
SourceName = Annotated[str, typer.Argument(help="Source name in sources.yml.")]
NewSourceName = Annotated[
    str, typer.Argument(help="The new source's name (lower case: its raw dataset is raw_<name>).")
]
GenerateCheck = Annotated[bool, typer.Option("--check", help="Write nothing: exit 1 when a file is stale (for CI).")]
SourceKind = Annotated[str, typer.Option("--kind", help="database, api, files or stream.")]
DiscoverSchema = Annotated[
    str | None,
    typer.Option("--schema", help="Database sources: the schema (PostgreSQL) or database (MySQL) to reflect."),
]
ReplayExport = Annotated[
    Path | None,
    typer.Option("--export", help="Write the pending dead letters as JSON lines to correct, and load nothing."),
]
ReplayFrom = Annotated[
    Path | None,
    typer.Option(
        "--from", help="Replay only the dead letters of this file (an --export, corrected), with its records."
    ),
]
EraseSource = Annotated[str, typer.Option("--source", help="The source (its name in sources.yml).")]
EraseTable = Annotated[str, typer.Option("--table", help="The source table the subject is identified in.")]
EraseKey = Annotated[
    list[str] | None,
    typer.Option("--key", help="column=value naming the subject (repeat for a composite key); compared as text."),
]
EraseKeys = Annotated[
    Path | None, typer.Option("--keys", help="A CSV file: a header of column names, a subject per line.")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")]
