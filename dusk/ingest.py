"""The ingest step: every declared source into its ``raw_<source>`` dataset with dlt."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dlt
import sqlalchemy as sa
from dlt.common.destination.exceptions import DestinationUndefinedEntity
from dlt.load.exceptions import LoadClientJobFailed

from dusk.settings import PROJECT_DIR, Settings
from ingestion.config import SourceSpec
from ingestion.database import database_source, new_staging_dir, plan_source, remove_staging_dir

log = logging.getLogger(__name__)

LOAD_MEMORY_LIMIT = "600MB"


def configure_dlt() -> None:
    """dlt settings the pipeline relies on, whatever the working directory's .dlt folder says."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    # The database source writes _dlt_load_id into its parquet files itself, so dlt imports them
    # unchanged instead of rewriting every file to add it.
    os.environ.setdefault("NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID", "false")
    # A value the warehouse refuses (a terminal job failure) aborts the package: dlt deletes it,
    # records the load as aborted (its state row then never counts) and rewinds the local state,
    # so the cursor stays where raw is and the next night reads the rows again. Without this the
    # package stays pending and fails again every night: the source is stuck.
    os.environ.setdefault("LOAD__AUTO_ABORT_ON_TERMINAL_ERROR", "true")


@dataclass
class TableStats:
    """Rows of one source table in one run."""

    table: str
    extracted: int = 0
    deleted: int = 0
    loaded: int = 0
    quarantined: int = 0


@dataclass
class SourceResult:
    """What ingesting one source did."""

    source: str
    ok: bool
    seconds: float
    tables: list[TableStats] = field(default_factory=list)
    error: str | None = None
    finished_pending: bool = False
    load_ids: list[str] = field(default_factory=list)
    pending_load_ids: list[str] = field(default_factory=list)
    """The load ids (among ``load_ids``) of packages an interrupted run left, finished first; the
    tables' counts are of this run's own packages."""
    skipped: str | None = None
    """Why the source was not read this run (a demo stream without its server), if it was not."""
    transient: bool = False
    """The failure looks passing (connection refused or reset, timeout): worth another attempt."""
    attempts: int = 1
    schema_changes: list[str] = field(default_factory=list)
    """Source schema changes found this run: widenings applied to raw, new source types recorded."""
    notes: list[str] = field(default_factory=list)
    """Columns that land as another type than the obvious one, and why (e.g. a numeric as text)."""


def credentials_for(spec: SourceSpec, settings: Settings) -> str:
    """The source's connection string: dlt secrets/env first, the demo file for a demo source."""
    configured: Any = dlt.secrets.get(f"sources.{spec.name}.credentials")
    if configured:
        return str(configured)
    if spec.demo:
        return demo_shop_url(settings)
    raise RuntimeError(
        f"source {spec.name!r}: no connection configured; set SOURCES__{spec.name.upper()}__CREDENTIALS "
        f"or [sources.{spec.name}] credentials in .dlt/secrets.toml"
    )


def demo_shop_url(settings: Settings) -> str:
    """The demo shop's SQLite database."""
    return f"sqlite:///{settings.demo_dir / 'shop.sqlite'}"


def make_pipeline(spec: SourceSpec, settings: Settings) -> dlt.Pipeline:
    """The dlt pipeline of one source; its state lives in the warehouse beside the data."""
    return dlt.pipeline(
        pipeline_name=spec.name,
        destination=dlt.destinations.duckdb(
            credentials={
                "database": str(settings.warehouse),
                # parquet files load in parallel; memory stays capped (DuckDB spills beyond it)
                "global_config": {"preserve_insertion_order": False, "memory_limit": LOAD_MEMORY_LIMIT},
            }
        ),
        dataset_name=spec.dataset,
        pipelines_dir=str(settings.pipelines_dir),
    )


def adopt_package_schemas(pipeline: dlt.Pipeline) -> list[str]:
    """Make the schemas of extracted packages left by a killed run the pipeline's stored ones.

    dlt normalizes a package with the *stored* schema. A run killed after extracting but before
    saving its schema leaves the stored schema one run behind: e.g. a table whose first load was
    written as ``replace`` and is now declared ``merge`` would be replaced by the package's few
    changed rows. The package's own schema is what its rows were extracted for."""
    from dlt.common.schema import Schema

    extracted = Path(pipeline.working_dir) / "normalize" / "extracted"
    adopted = []
    for package in sorted(extracted.iterdir()) if extracted.exists() else []:
        schema_file = package / "schema.json"
        if not schema_file.exists():
            continue
        schema = Schema.from_dict(json.loads(schema_file.read_text()))
        stored = pipeline.schemas.get(schema.name) if schema.name in pipeline.schemas else None
        newer = stored is None or (
            schema.version >= stored.version and schema.stored_version_hash != stored.stored_version_hash
        )
        if newer:
            pipeline.schemas.save_schema(schema)
            adopted.append(package.name)
    return adopted


def drop_normalized_leftovers(pipeline: dlt.Pipeline) -> list[str]:
    """Remove extracted packages that dlt had already normalized when the run was killed.

    dlt's normalize commits the normalized package, then deletes the extracted one; a SIGKILL
    during that delete leaves a half-deleted extracted package (e.g. no ``new_jobs``) whose rows are
    safe in the normalized or loaded package, and which would make every later normalize fail."""
    root = Path(pipeline.working_dir)
    extracted = root / "normalize" / "extracted"
    dropped = []
    for package in sorted(extracted.iterdir()) if extracted.exists() else []:
        committed = [root / "load" / stage / package.name for stage in ("normalized", "loaded")]
        if package.is_dir() and any(p.exists() for p in committed):
            log.warning(
                "pipeline=%s removing extracted package %s, normalized before a kill",
                pipeline.pipeline_name,
                package.name,
            )
            shutil.rmtree(package)
            dropped.append(package.name)
    return dropped


_ATOMIC_TEMP = re.compile(r"[0-9a-f]{16}")
"""dlt writes every file of its working folder (state, schemas, packages' state) to a temporary
file named by 8 random bytes in hex in the storage's root, then renames it."""


def drop_unfinished_writes(working_dir: Path) -> list[str]:
    """Remove the temporary files of dlt writes that a kill interrupted before their rename.

    Their target is intact (the rename never happened), so nothing is lost; but one left in
    ``schemas/`` is read as a schema named after it, and dlt's sync step, clearing the schema
    folder, fails on it (``FileNotFoundError: .../<hex>.schema.json``) at every later run."""
    removed = []
    roots = [working_dir, *(p for p in working_dir.iterdir() if p.is_dir())] if working_dir.is_dir() else []
    for root in roots:
        for path in root.iterdir():
            if path.is_file() and _ATOMIC_TEMP.fullmatch(path.name):
                log.warning("pipeline folder %s: removing %s, a write interrupted by a kill", working_dir, path.name)
                path.unlink()
                removed.append(str(path.relative_to(working_dir)))
    return removed


class BackfillUnsupported(RuntimeError):
    """The source's kind cannot re-read a past window."""


BACKFILL_KINDS = ("database", "api")
"""Kinds that can re-read a window of their cursor: files are loaded once by name, and a
stream's messages are gone once acknowledged."""


def ingest_source(
    spec: SourceSpec,
    settings: Settings,
    only: set[str] | None = None,
    window: tuple[datetime, datetime] | None = None,
) -> SourceResult:
    """Extract, normalise and load one source; never raises, the result says what went wrong.

    ``window`` (start, end): a backfill, re-reading the rows whose cursor lies in
    ``[start, end)`` and merging them on their key, without moving the incremental cursor."""
    started = time.monotonic()
    result = SourceResult(source=spec.name, ok=False, seconds=0.0)
    try:
        drop_unfinished_writes(settings.pipelines_dir / spec.name)
        pipeline = make_pipeline(spec, settings)
        drop_normalized_leftovers(pipeline)
        if pipeline.has_pending_data:
            # A killed run left packages behind: finish them first. dlt's run() would load them and
            # return without extracting, so fresh data is extracted below, in the same night.
            log.warning("source=%s finishing load packages left by an interrupted run", spec.name)
            adopt_package_schemas(pipeline)
            pipeline.normalize()
            try:
                info = pipeline.load()  # None when normalize left nothing to load
            except Exception as exc:
                if not isinstance(_innermost(exc), LoadClientJobFailed) or pipeline.has_pending_data:
                    raise
                # refused and aborted: the cursor is back where raw is, this run reads the rows again
                info = None
                result.notes.append(f"an interrupted run's load package was aborted: {_describe(spec, exc)}")
                log.warning("source=%s %s", spec.name, result.notes[-1])
            result.finished_pending = True
            if info is not None:
                result.load_ids.extend(info.loads_ids)
                result.pending_load_ids.extend(info.loads_ids)
        # a killed run may have left its staged files here; dlt already holds what it imported
        remove_staging_dir(settings.pipelines_dir / "_staging" / spec.name)
        if window is not None and spec.kind not in BACKFILL_KINDS:
            raise BackfillUnsupported(
                f"source {spec.name!r} (kind {spec.kind}) cannot be backfilled: only {', '.join(BACKFILL_KINDS)} "
                "sources re-read a window of their cursor"
            )
        staging = new_staging_dir(settings.pipelines_dir / "_staging" / spec.name)
        try:
            KINDS[spec.kind](_SourceRun(pipeline, spec, settings, result, staging, only, window))
        finally:
            remove_staging_dir(staging)
        if result.ok:
            check_counts(pipeline, result)
    except Exception as exc:  # one source's failure is reported, not raised
        log.exception("source=%s ingest failed", spec.name)
        result.error = _describe(spec, exc)
        result.transient = is_transient(exc)
    result.seconds = time.monotonic() - started
    return result


def check_counts(pipeline: dlt.Pipeline, result: SourceResult) -> None:
    """Counts never lie: every table's ``loaded`` must be the rows raw received from this run's
    own load packages. A difference is a defect of dusk, not of the data: it is logged and named
    in the summary (the proof suites fail on it)."""
    own = [i for i in result.load_ids if i not in result.pending_load_ids]
    if not own:
        return
    ids = ", ".join("'" + i.replace("'", "''") + "'" for i in own)
    with pipeline.sql_client() as client:
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


@dataclass
class _SourceRun:
    """One source's ingest in progress: what each kind's function works with and fills in."""

    pipeline: dlt.Pipeline
    spec: SourceSpec
    settings: Settings
    result: SourceResult
    staging: Path
    only: set[str] | None
    window: tuple[datetime, datetime] | None = None

    def loaded(self, info: Any) -> None:
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
        self.result.tables = _table_stats(self.pipeline, self.spec, deleted or {}, self.only, quarantined, ran)
        self.result.ok = not failures
        if failures:
            self.result.error = "; ".join(failures)


def _ingest_database(run: _SourceRun) -> None:
    url = sa.make_url(credentials_for(run.spec, run.settings))
    plans = plan_source(run.pipeline, url, run.spec, run.only, now=run.settings.detected_at, window=run.window)
    # recorded before loading: a widening is applied to raw at planning, whatever the load does
    run.result.schema_changes = [c for p in plans for c in p.changes]
    run.result.notes = [n for p in plans for n in p.notes]
    for change in run.result.schema_changes:
        log.warning("source=%s schema change: %s", run.spec.name, change)
    run.loaded(run.pipeline.run(database_source(run.spec, url, plans, run.staging)))
    run.finish(deleted={p.spec.name: p.deleted_count for p in plans})


def _ingest_files(run: _SourceRun) -> None:
    from ingestion import files

    spec = run.spec
    landing = files.landing_dir(spec, run.settings.landing_dir, PROJECT_DIR)
    plan = files.plan_files(run.pipeline, spec, landing)
    prepared = files.prepare(spec, plan, run.staging)
    create = tuple(t.name for t in files.missing_tables(run.pipeline, spec))
    if plan.ledger or create:
        run.loaded(run.pipeline.run(files.files_source(spec, plan, prepared, create)))
    if spec.option("archive"):
        files.archive(plan)
    quarantined = {name: item.quarantined for name, item in prepared.items()}
    run.finish(quarantined=quarantined, ran=bool(plan.ledger), failures=plan.failures)
    run.noted([note for item in prepared.values() for note in item.notes])
    for name, item in prepared.items():
        run.merged(
            name,
            item.replaced,
            f"{name}: {item.replaced} row(s) were replaced by a later file's row with the same key in this run "
            "(the last file in name order wins)",
        )
    log.info("source=%s files new=%d seen=%d failed=%d", spec.name, len(plan.new), len(plan.seen), len(plan.failures))


def _ingest_api(run: _SourceRun) -> None:
    from ingestion import api

    spec = run.spec
    base_url, token = api.endpoint_settings(spec)
    if not base_url:
        raise RuntimeError(
            f"source {spec.name!r}: no base URL; set SOURCES__{spec.name.upper()}__BASE_URL or "
            f"{spec.kind}.base_url in sources.yml"
        )
    session = api.session_for(spec)
    repeats: dict[str, api.Repeats] = {}
    run.loaded(run.pipeline.run(api.api_source(spec, base_url, token, session, run.window, repeats)))
    run.finish()
    for name, seen in repeats.items():
        # raw received one row per key: the summary counts those, and names the repeats
        note = seen.note()
        if note:
            run.noted([note])
        run.merged(name, seen.kept_repeats, None)
    log.info("source=%s api requests=%d", spec.name, session.attempts)


def _ingest_stream(run: _SourceRun) -> None:
    from ingestion import stream
    from ingestion.files import missing_tables

    spec = run.spec
    create = tuple(t.name for t in missing_tables(run.pipeline, spec))
    try:
        reader = stream.StreamReader(spec).open()
    except stream.StreamUnreachable as exc:
        if not spec.demo:
            raise
        # the demo's event stream is optional: the night goes on without it, and says so
        run.result.skipped = str(exc)
        if create:  # raw still gets the (empty) tables that dbt reads
            run.pipeline.run(stream.stream_source(spec, stream.Batch(), create))
        run.finish(ran=False)
        log.warning("source=%s skipped: %s", spec.name, exc)
        return
    with reader:
        batch = reader.fetch()
        if batch.messages or create:
            try:
                info = run.pipeline.run(stream.stream_source(spec, batch, create))
            except Exception:
                reader.nak(batch)  # not loaded: deliver again at once
                raise
            reader.ack(batch)  # only now: the rows are committed in the warehouse
            run.loaded(info)
    quarantined = Counter(str(q["source_table"]) for q in batch.quarantine)
    run.finish(quarantined=dict(quarantined), ran=bool(batch.messages))
    run.noted(batch.notes)
    for name, repeats in batch.repeats.items():
        run.merged(
            name,
            repeats,
            f"{name}: {repeats} message(s) repeated the key of another message of this batch (a producer's "
            "retry or an update); the last one by stream sequence was kept",
        )
    log.info("source=%s stream messages=%d quarantined=%d", spec.name, len(batch.messages), len(batch.quarantine))


def _table_stats(
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


KINDS = {"database": _ingest_database, "files": _ingest_files, "api": _ingest_api, "stream": _ingest_stream}
"""How each kind of source is ingested into its pipeline."""


TRANSIENT_WORDS = (
    "connection refused",
    "timed out",
    "timeout",
    "could not connect",
    "connection reset",
    "server closed the connection",
    "terminating connection",
    "temporarily unavailable",
    "circuit breaker open",
    "no servers available",
)
PERMANENT_WORDS = ("authentication", "password", "permission denied", "does not exist", "access denied")


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying: the network or the server was briefly unavailable. A
    wrong password, a missing table or bad data is never transient (retrying cannot help)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        nxt = seen.__cause__ or seen.__context__ or getattr(seen, "exception", None)
        seen = nxt if isinstance(nxt, BaseException) else None
    text = " ".join(str(e).lower() for e in chain)
    if any(word in text for word in PERMANENT_WORDS):
        return False
    if any(isinstance(e, ConnectionError | TimeoutError) for e in chain):
        return True
    return any(word in text for word in TRANSIENT_WORDS) or re.search(r"\b50[234]\b", text) is not None


def _innermost(exc: BaseException) -> BaseException:
    """The cause dlt's step exceptions wrap (down to a refused load job, which is kept whole)."""
    inner: BaseException = exc
    while not isinstance(inner, LoadClientJobFailed) and (
        inner.__cause__ is not None or getattr(inner, "exception", None) is not None
    ):
        nxt = inner.__cause__ or getattr(inner, "exception", None)
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    return inner


def _describe(spec: SourceSpec, exc: BaseException) -> str:
    """One line naming the source and the innermost cause (dlt wraps errors in step exceptions)."""
    inner = _innermost(exc)
    if isinstance(inner, LoadClientJobFailed):
        return _refused_by_warehouse(spec, inner)
    text = " ".join(str(inner).split()) or type(inner).__name__
    if len(text) > 600:
        text = text[:600] + " ..."
    return f"source {spec.name!r}: {type(inner).__name__}: {text}"


def _refused_by_warehouse(spec: SourceSpec, exc: LoadClientJobFailed) -> str:
    """A load job the warehouse refused (a value its column type cannot hold): the table from the
    job's id, the database's own message (it names the value), and what happened and what to do."""
    table = str(exc.job_id).split(".", 1)[0]  # dlt's job ids: <table>.<file id>.<format>
    lines = [line.strip() for line in str(exc.failed_message).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "Error" in line and ":" in line), lines[-1] if lines else "")
    reason = reason.split(": ", 1)[1] if reason.split(": ", 1)[0].endswith(("Exception", "Error")) else reason
    return (
        f"source {spec.name!r}, table {table!r}: the warehouse refused a value: {' '.join(reason.split())[:400]}. "
        "dlt aborted this run's load package and the source's cursor did not move: its rows are read again "
        "next run. Fix the value at the source, or declare the column's type in "
        "sources.yml so that raw holds it (e.g. columns: {<column>: text})."
    )
