"""The publish step, write-audit-publish: readers get a separate DuckDB file, replaced whole and atomically.

The night writes and tests in the warehouse (``DUSK_WAREHOUSE``). Only when the audit passed
(dbt's tests and the monitoring checks) are the reader-facing schemas copied, as tables, into a
new file next to the served one, which then replaces it with one ``rename``. So:

- a reader sees yesterday's published data or tonight's tested data, never a mix or a failed
  night's data;
- a reader holding the served file (a BI tool, a notebook; read-only) never blocks the nightly:
  the nightly never writes that file, and a reader with it open keeps reading the old copy until
  it reconnects;
- a run killed while publishing leaves the served file as it was (the half-written copy is
  removed by the next publish).

Raw schemas (unhashed PII) and ``dusk_private`` (the PII salt) are never published.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from dusk import ledger
from dusk.record import PublishResult, RunResult
from dusk.settings import Settings
from dusk.warehouse import LEDGER, PublishError, check_schemas

log = logging.getLogger(__name__)

ABOUT = "dusk_published"
"""The served file's own schema: which run it holds (table ``about``)."""


def publish(settings: Settings, con: duckdb.DuckDBPyConnection, record: RunResult) -> None:
    """The publish step: tonight's tested data to readers, when the night passed; the outcome is
    set on ``record`` and written to the ledger (the served copy's ledger holds it too)."""
    if not record.publishable:
        if record.dbt is not None:
            record.publish_error = "tonight did not pass (see above)"
            ledger.step(con, record, "publish", None, "not published", 0.0)
        return
    try:
        record.published = copy_to_served(con, settings.served_path, settings.publish_schemas, record)
    except PublishError as exc:
        log.error("%s", exc)
        record.publish_error = str(exc)
        ledger.step(con, record, "publish", None, "not published", 0.0)
        return
    ledger.step(con, record, "publish", str(record.published.path), "ok", record.published.seconds, 1)


def copy_to_served(
    con: duckdb.DuckDBPyConnection, served: Path, schemas: tuple[str, ...], record: RunResult
) -> PublishResult:
    """Copy ``schemas`` of the warehouse (tables and views, as tables) into a new file and swap it
    in for ``served`` atomically. The copy's ledger holds tonight's publish step and the run as
    it stands once published. Raises PublishError; the served file is then unchanged."""
    started = time.monotonic()
    check_schemas(schemas)
    served.parent.mkdir(parents=True, exist_ok=True)
    building = served.with_name(served.name + ".next")
    for leftover in (building, building.with_name(building.name + ".wal")):
        leftover.unlink(missing_ok=True)  # from a run killed while publishing
    result = PublishResult(path=served, run_id=record.run_id, seconds=0.0)
    try:
        con.execute(f"attach '{_quote(building)}' as served")
        try:
            _copy(con, schemas, result)
            if LEDGER in schemas:
                result.seconds = time.monotonic() - started
                _close_served_ledger(con, record, result)
            con.execute(f"create schema served.{ABOUT}")
            con.execute(
                f"create table served.{ABOUT}.about as select ?::varchar as run_id, ?::timestamp as published_at",
                [record.run_id, datetime.now(UTC).replace(tzinfo=None)],
            )
        finally:
            con.execute("detach served")  # checkpoints: the file is complete, no WAL left
        _fsync(building)
        os.replace(building, served)  # readers see the old file or the new one, never a mix
        _fsync(served.parent)
    except (duckdb.Error, OSError) as exc:
        building.unlink(missing_ok=True)
        raise PublishError(f"publishing to {served} failed, the served data is unchanged: {exc}") from exc
    result.seconds = time.monotonic() - started
    log.info("published run %s to %s: %d tables in %.1fs", record.run_id, served, len(result.tables), result.seconds)
    return result


def _copy(con: duckdb.DuckDBPyConnection, schemas: tuple[str, ...], result: PublishResult) -> None:
    found = con.execute(
        "select table_schema, table_name from information_schema.tables "
        "where table_catalog = current_database() and table_schema in "
        f"({', '.join('?' for _ in schemas)}) order by 1, 2",
        list(schemas),
    ).fetchall()
    missing = sorted(set(schemas) - {s for s, _ in found})
    if missing:
        log.warning("publish: the warehouse has no schema %s yet; published without it", ", ".join(missing))
    for schema in sorted({s for s, _ in found}):
        con.execute(f'create schema served."{schema}"')
    for schema, table in found:
        con.execute(f'create table served."{schema}"."{table}" as select * from "{schema}"."{table}"')
        count = con.execute(f'select count(*) from served."{schema}"."{table}"').fetchone()
        result.tables[f"{schema}.{table}"] = int(count[0]) if count else 0


def _close_served_ledger(con: duckdb.DuckDBPyConnection, record: RunResult, result: PublishResult) -> None:
    """The served ledger says what readers hold: tonight published, and the run as it ended
    (alerting and the report come later and never change its status)."""
    record.published = result
    try:
        ledger.step(con, record, "publish", str(result.path), "ok", result.seconds, 1, catalog="served.")
        ledger.close_run(con, record, catalog="served.")
    finally:
        record.published = None


def published_run(served: Path) -> str | None:
    """The run id the served file holds (None when nothing was published yet)."""
    if not served.exists():
        return None
    with duckdb.connect(str(served), read_only=True) as con:
        row = con.execute(f"select run_id from {ABOUT}.about").fetchone()
    return str(row[0]) if row else None


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
