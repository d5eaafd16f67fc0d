"""Ingest one source: its dlt pipeline, what a killed run left, the kind's extract, the counts.

This is ingestion's one entry point (:func:`ingest_source`). The caller says where the data lands
(:class:`Target`) and, where it does not come from dlt's config, how to reach the source
(:class:`Connection`); nothing here reads the runner or its settings.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dlt
from dlt.common.destination.exceptions import DestinationUndefinedEntity

from ingestion import recovery
from ingestion.declaration import SourceSpec
from ingestion.errors import JOB_FAILURES, describe, innermost, is_transient
from ingestion.extensions import fix_iceberg_upsert, raw_client
from ingestion.infer import pinned_spec
from ingestion.result import SourceResult, TableStats

log = logging.getLogger(__name__)

BACKFILL_KINDS = ("database", "api")
"""Kinds that can re-read a window of their cursor: files are loaded once by name, and a
stream's messages are gone once acknowledged."""


@dataclass(frozen=True)
class Target:
    """Where a source lands: a dlt destination (the warehouse) and dlt's working folder."""

    destination: Any
    """A dlt destination, e.g. ``dlt.destinations.duckdb(...)``."""
    work_dir: Path
    """dlt's pipelines folder; ``_staging/<source>`` beside them holds the files being loaded."""
    landing_dir: Path
    """The landing folder of a files source that names none (``files.path``)."""
    base_dir: Path
    """A relative ``files.path`` is taken from here."""
    loader_file_format: str | None = None
    """The file format dlt loads with (None: the destination's choice); ``parquet`` for
    PostgreSQL, which then loads by binary COPY instead of row inserts."""
    table_format: str | None = None
    """The table format raw is written in (``iceberg`` on a lake; None: the destination's)."""
    file_column: str = "_file"
    """The raw column a files source keeps each row's file name in (``_source_file`` on Iceberg,
    which reserves ``_file`` for its own metadata column)."""
    merge_strategy: str | None = None
    """dlt's merge strategy of every ``merge`` table (``upsert`` on Iceberg, which refuses dlt's
    default ``delete-insert``; None: the default)."""


@dataclass(frozen=True)
class Connection:
    """How to reach a source, handed in by the caller; None values fall back to dlt's config
    (``SOURCES__<NAME>__...`` or .dlt/secrets.toml)."""

    credentials: str | None = None
    """A database source's connection URL."""
    base_url: str | None = None
    """An API source's base URL."""
    token: str | None = None
    """An API source's bearer token."""


def make_pipeline(spec: SourceSpec, target: Target) -> dlt.Pipeline:
    """The dlt pipeline of one source; its state lives in the warehouse beside the data.

    A working folder that holds no schema of the source (a new machine, a cleared ``data/dlt``,
    an installation just moved to another engine) first takes the state and schemas the
    warehouse holds. dlt would do that itself, but only inside ``run``: a database source plans
    its night (cursors, the key-diff, first load or not) from them before that."""
    pipeline = dlt.pipeline(
        pipeline_name=spec.name,
        destination=target.destination,
        dataset_name=spec.dataset,
        pipelines_dir=str(target.work_dir),
    )
    if pipeline.default_schema_name is None:
        pipeline.sync_destination()
    return pipeline


def run_pipeline(pipeline: dlt.Pipeline, target: Target, source: Any) -> Any:
    """``pipeline.run`` in the target's file and table formats and merge strategy; dlt's load info."""
    strategy = target.merge_strategy
    if strategy is not None:
        resources = source.resources.values() if hasattr(source, "resources") else [source]
        for resource in resources:
            if resource.write_disposition == "merge":
                resource.apply_hints(write_disposition={"disposition": "merge", "strategy": strategy})
    return pipeline.run(
        source,
        loader_file_format=target.loader_file_format,  # type: ignore[arg-type]
        table_format=target.table_format,  # type: ignore[arg-type]
    )


class BackfillUnsupported(RuntimeError):
    """The source's kind cannot re-read a past window."""


@dataclass
class SourceRun:
    """One source's ingest in progress: what each kind's ``ingest`` works with and fills in."""

    pipeline: dlt.Pipeline
    spec: SourceSpec
    target: Target
    connection: Connection
    result: SourceResult
    staging: Path
    only: set[str] | None
    window: tuple[datetime, datetime] | None = None
    detected_at: datetime | None = None

    def pinned(self) -> SourceSpec:
        """The source's spec with each inferred table's columns as raw's dlt schema holds them."""
        known: dict[str, Any] = self.pipeline.default_schema.tables if self.pipeline.default_schema_name else {}
        return pinned_spec(known, self.spec, self.target.file_column)

    def run(self, source: Any) -> Any:
        """``pipeline.run`` in the target's file and table formats; dlt's load info."""
        return run_pipeline(self.pipeline, self.target, source)

    def load(self, source: Any) -> Any:
        """Run ``source`` and record the load ids; dlt's load info."""
        info = self.run(source)
        self.loaded(info)
        return info

    def loaded(self, info: Any) -> None:
        """Record the load ids of one ``pipeline.run``."""
        self.result.load_ids.extend(info.loads_ids)

    def merged(self, table: str, repeats: int, note: str | None) -> None:
        """``repeats`` rows of ``table`` repeated a key of this run and were merged into one row
        (dlt's dedup keeps one per key): raw received that many fewer, so the counts say so, and
        ``note`` says why."""
        if not repeats:
            return
        for stats in self.result.tables:
            if stats.table == table:
                stats.extracted -= repeats
                stats.loaded -= repeats
        if note:
            self.noted([note])

    def noted(self, notes: list[str]) -> None:
        """Add lines for the summary (and the log) about how this run's data landed."""
        self.result.notes.extend(notes)
        for note in notes:
            log.warning("source=%s %s", self.spec.name, note)

    def finish(
        self,
        deleted: dict[str, int] | None = None,
        quarantined: dict[str, int] | None = None,
        ran: bool = True,
        failures: list[str] | None = None,
    ) -> None:
        """Record the tables' counts (from dlt's trace when dlt ran) and the verdict."""
        self.result.tables = table_stats(self.pipeline, self.spec, deleted or {}, self.only, quarantined, ran)
        self.result.ok = not failures
        if failures:
            self.result.error = "; ".join(failures)


def ingest_source(
    spec: SourceSpec,
    target: Target,
    connection: Connection | None = None,
    only: set[str] | None = None,
    window: tuple[datetime, datetime] | None = None,
    detected_at: datetime | None = None,
) -> SourceResult:
    """Extract, normalise and load one source; never raises, the result says what went wrong.

    ``only``: these tables alone. ``window`` (start, end): a backfill, re-reading the rows whose
    cursor lies in ``[start, end)`` and merging them on their key, without moving the incremental
    cursor. ``detected_at``: the time stamped on rows key-diff finds gone or back (None: now)."""
    started = time.monotonic()
    result = SourceResult(source=spec.name, ok=False, seconds=0.0)
    pipeline: dlt.Pipeline | None = None
    try:
        if target.table_format == "iceberg":
            fix_iceberg_upsert()
        recovery.drop_unfinished_writes(target.work_dir / spec.name)
        pipeline = make_pipeline(spec, target)
        recovery.drop_normalized_leftovers(pipeline)
        if pipeline.has_pending_data:
            _finish_pending(pipeline, spec, result)
        # a killed run may have left its staged files here; dlt already holds what it imported
        remove_staging_dir(target.work_dir / "_staging" / spec.name)
        if window is not None and spec.kind not in BACKFILL_KINDS:
            raise BackfillUnsupported(
                f"source {spec.name!r} (kind {spec.kind}) cannot be backfilled: only {', '.join(BACKFILL_KINDS)} "
                "sources re-read a window of their cursor"
            )
        staging = new_staging_dir(target.work_dir / "_staging" / spec.name)
        run = SourceRun(pipeline, spec, target, connection or Connection(), result, staging, only, window, detected_at)
        try:
            importlib.import_module(f"ingestion.{spec.kind}.ingest").ingest(run)
        finally:
            remove_staging_dir(staging)
        if result.ok:
            check_counts(pipeline, result)
    except Exception as exc:  # one source's failure is reported, not raised
        log.exception("source=%s ingest failed", spec.name)
        if pipeline is not None:
            try:
                abort_refused(pipeline, exc)
            except Exception:  # the failure is reported all the same; the next run finds the package
                log.exception("source=%s aborting the refused package failed", spec.name)
        result.error = describe(spec, exc)
        result.transient = is_transient(exc)
    result.seconds = time.monotonic() - started
    return result


def _finish_pending(pipeline: dlt.Pipeline, spec: SourceSpec, result: SourceResult) -> None:
    """A killed run left packages behind: finish them first. dlt's run() would load them and
    return without extracting, so fresh data is extracted after this, in the same night."""
    log.warning("source=%s finishing load packages left by an interrupted run", spec.name)
    recovery.adopt_package_schemas(pipeline)
    try:
        pipeline.normalize()
        info = pipeline.load()  # None when normalize left nothing to load
    except Exception as exc:
        if not abort_refused(pipeline, exc):
            raise
        # refused and aborted: the cursor is back where raw is, this run reads the rows again
        info = None
        result.notes.append(f"an interrupted run's load package was aborted: {describe(spec, exc)}")
        log.warning("source=%s %s", spec.name, result.notes[-1])
    result.finished_pending = True
    if info is not None:
        result.load_ids.extend(info.loads_ids)
        result.pending_load_ids.extend(info.loads_ids)


def abort_refused(pipeline: dlt.Pipeline, exc: BaseException) -> bool:
    """After a job failed for a value its column cannot hold: whether the run's packages are gone
    and the local state (the cursors) is back where raw is, so the next run reads the rows again.
    dlt aborts a package the warehouse refused by itself (``LOAD__AUTO_ABORT_ON_TERMINAL_ERROR``);
    one refused while it wrote the load files (parquet cannot hold the value) stays pending and
    would fail again every night, a stuck source: it is aborted here."""
    if not isinstance(innermost(exc), JOB_FAILURES):
        return False
    if pipeline.has_pending_data:
        pipeline.abort_packages()
    return not pipeline.has_pending_data


def check_counts(pipeline: dlt.Pipeline, result: SourceResult) -> None:
    """Counts never lie: every table's ``loaded`` must be the rows raw received from this run's
    own load packages. A difference is a defect of dusk, not of the data: it is logged and named
    in the summary (the proof suites fail on it)."""
    own = [i for i in result.load_ids if i not in result.pending_load_ids]
    if not own:
        return
    ids = ", ".join("'" + i.replace("'", "''") + "'" for i in own)
    with raw_client(pipeline) as client:
        for stats in result.tables:
            table = client.make_qualified_table_name(stats.table)
            try:
                rows = client.execute_sql(f"select count(*) from {table} where _dlt_load_id in ({ids})")
            except DestinationUndefinedEntity:
                continue  # nothing loaded into it yet
            received = int(rows[0][0]) if rows else 0
            if received != stats.loaded:
                note = (
                    f"{stats.table}: counts do not reconcile: the summary says {stats.loaded} loaded, raw received "
                    f"{received} rows from this run (please report this as a bug)"
                )
                result.notes.append(note)
                log.error("source=%s %s", result.source, note)


def table_stats(
    pipeline: dlt.Pipeline,
    spec: SourceSpec,
    deleted: dict[str, int],
    only: set[str] | None,
    quarantined: dict[str, int] | None = None,
    ran: bool = True,
) -> list[TableStats]:
    """Rows per table from dlt's trace: items extracted into the package (changed rows after the
    incremental filter, plus the deletes we emitted) and rows normalised for loading."""
    trace = pipeline.last_trace if ran else None
    quarantined = quarantined or {}
    extracted: Counter[str] = Counter()
    if trace and trace.last_extract_info:
        for steps in trace.last_extract_info.metrics.values():
            for step in steps:
                for table, m in step["table_metrics"].items():
                    extracted[table] += m.items_count
    loaded = trace.last_normalize_info.row_counts if trace and trace.last_normalize_info else {}
    return [
        TableStats(
            t.name,
            extracted=extracted[t.name] - deleted.get(t.name, 0),
            deleted=deleted.get(t.name, 0),
            loaded=loaded.get(t.name, 0),
            quarantined=quarantined.get(t.name, 0),
        )
        for t in spec.tables
        if only is None or t.name in only
    ]


def new_staging_dir(root: Path) -> Path:
    """A fresh folder for one extract's parquet files."""
    return root / f"extract-{uuid.uuid4().hex[:12]}"


def remove_staging_dir(path: Path) -> None:
    """Remove an extract's parquet files once dlt holds them in its load package."""
    shutil.rmtree(path, ignore_errors=True)
