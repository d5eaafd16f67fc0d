"""The publish step, write-audit-publish: readers get tonight's tested data whole, or keep the last night's.

The night writes and tests in the warehouse. Only when the audit passed (dbt's tests and the
monitoring checks) are the reader-facing schemas (``DUSK_PUBLISH_SCHEMAS``) copied, as tables,
to where readers read, each engine in its own way:

- **DuckDB** (:func:`copy_to_served`): into a new file next to the served one
  (``DUSK_SERVED``), which then replaces it with one ``rename``; the new file starts as a copy of
  the served one when tonight leaves some of it as it is, and only what changed is written;
- **Spark** (:func:`swap_namespaces`): what changed into ``<prefix><schema>__next`` namespaces,
  whose tables one transaction of the Iceberg catalog then moves in;
- **PostgreSQL** (:func:`swap_schemas`): into ``<prefix><schema>__next`` schemas of the same
  database, which one transaction then renames to ``<prefix><schema>`` (``DUSK_PG_SERVED_PREFIX``,
  default ``served_``), with a bounded ``lock_timeout`` (``DUSK_PG_LOCK_TIMEOUT``). Renaming a
  schema waits for no reader; the previous night's schemas are dropped when no reader holds
  them any more (a reader's open transaction keeps them until it ends; they are dropped by a
  later publish). Every published relation is copied each night: moving a single table into
  the readers' schema would wait for the readers holding it.

On every engine:

- a reader sees yesterday's published data or tonight's tested data, never a mix or a failed
  night's data;
- a reader holding the served data (a BI tool, a notebook) never blocks the nightly for longer
  than a bounded wait: on DuckDB the nightly never writes the served file (a reader with it open
  keeps reading the old copy until it reconnects); on PostgreSQL a statement reads the old
  night's tables or the new night's, never a mix;
- a run killed while publishing leaves the served data as it was (the half-written copy is
  removed by the next publish).

Raw schemas (unhashed PII) and ``dusk_private`` (the PII salt) are never published.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from dusk import ledger
from dusk.record import UNCHANGED, PublishResult, RunResult
from dusk.settings import PostgresSettings, Settings
from dusk.warehouse import ABOUT, LEDGER, Connection, PublishError, Warehouse, check_schemas, table_names

log = logging.getLogger(__name__)


def publish(settings: Settings, warehouse: Warehouse, con: Connection, record: RunResult) -> None:
    """The publish step: tonight's tested data to readers, when the night passed; the outcome is
    set on ``record`` and written to the ledger (the served copy's ledger holds it too)."""
    if not record.publishable:
        if record.dbt is not None:
            record.publish_error = "tonight did not pass (see above)"
            ledger.step(con, record, "publish", None, "not published", 0.0)
        return
    try:
        if warehouse.engine == "postgres":
            record.published = swap_schemas(con, settings.postgres, settings.publish_schemas, record)
        elif warehouse.engine == "spark":
            record.published = swap_namespaces(con, settings, settings.publish_schemas, record)
        else:
            assert isinstance(con, duckdb.DuckDBPyConnection)
            record.published = copy_to_served(con, settings.served_path, settings.publish_schemas, record)
    except PublishError as exc:
        log.error("%s", exc)
        record.publish_error = str(exc)
        ledger.step(con, record, "publish", None, "not published", 0.0)
        return
    ledger.step(con, record, "publish", record.published.where, "ok", record.published.seconds, 1)


def copy_to_served(
    con: duckdb.DuckDBPyConnection, served: Path, schemas: tuple[str, ...], record: RunResult
) -> PublishResult:
    """Copy ``schemas`` of the warehouse (tables and views, as tables) into a new file and swap it
    in for ``served`` atomically. The copy's ledger holds tonight's publish step and the run as
    it stands once published. Raises PublishError; the served file is then unchanged.

    When readers have a served file and tonight leaves some of it as it is (withheld relations,
    and those the data diff found unchanged), the new file starts as a copy of theirs (a file
    copy, in the kernel), and only what changed is written into it: the publish costs what
    changed, not the warehouse."""
    started = time.monotonic()
    check_schemas(schemas)
    served.parent.mkdir(parents=True, exist_ok=True)
    building = served.with_name(served.name + ".next")
    for leftover in (building, building.with_name(building.name + ".wal")):
        leftover.unlink(missing_ok=True)  # from a run killed while publishing
    result = PublishResult(where=str(served), run_id=record.run_id, seconds=0.0)
    kept = _withheld(record) | _reusable(record)
    try:
        if kept and served.exists():
            shutil.copyfile(served, building)  # what readers have; tonight's changes are written over it
        con.execute(f"attach '{_quote(building)}' as served")
        try:
            current = _tables_of(con, "served")
            for name in sorted(current):  # what is rewritten whole, or no longer published
                schema, table = name.split(".", 1)
                if schema in (ABOUT, LEDGER) or name not in kept or schema not in schemas:
                    con.execute(f'drop table served."{schema}"."{table}"')
                    current.discard(name)
            reuse = Kept(kept, lambda schema: f'served."{schema}"', current, _withheld(record), reuse=True)
            _fill(con, schemas, record, result, started, lambda schema: f'served."{schema}"', reuse)
        finally:
            con.execute("detach served")  # checkpoints: the file is complete, no WAL left
        _fsync(building)
        os.replace(building, served)  # readers see the old file or the new one, never a mix
        _fsync(served.parent)
    except (duckdb.Error, OSError) as exc:
        building.unlink(missing_ok=True)
        raise PublishError(f"publishing to {served} failed, the served data is unchanged: {exc}") from exc
    result.seconds = time.monotonic() - started
    log.info(
        "published run %s to %s: %d tables (%d as readers had them) in %.1fs",
        record.run_id,
        served,
        len(result.tables),
        len(result.reused) + len(result.kept),
        result.seconds,
    )
    return result


def swap_schemas(con: Connection, pg: PostgresSettings, schemas: tuple[str, ...], record: RunResult) -> PublishResult:
    """Copy ``schemas`` (tables and views, as tables) into ``<prefix><schema>__next`` schemas,
    then rename them to ``<prefix><schema>`` in one transaction, the previous ones aside. Raises
    PublishError; readers then keep what they had."""
    started = time.monotonic()
    check_schemas(schemas)
    served = {schema: pg.served_prefix + schema for schema in (*schemas, ABOUT)}
    result = PublishResult(where=f"{pg.url(password=False)} ({pg.served_prefix}*)", run_id=record.run_id, seconds=0.0)
    timeout = f"set lock_timeout = {int(pg.lock_timeout * 1000)}"
    try:
        con.execute(timeout)
        for name in served.values():  # a run killed while publishing left its copy: nobody reads it
            con.execute(f'drop schema if exists "{name}{NEXT}" cascade')
        _drop_retired(con, pg)
        kept = _kept_on_server(con, record, served)
        _fill(con, schemas, record, result, started, lambda schema: f'"{served[schema]}{NEXT}"', kept)
        retired = f"{RETIRED}{int(time.time())}"
        existing = {n for (n,) in con.execute("select nspname from pg_namespace").fetchall()}
        con.execute("begin")
        try:
            con.execute(timeout.replace("set ", "set local "))
            for name in served.values():
                if name in existing:
                    con.execute(f'alter schema "{name}" rename to "{name}{retired}"')
                con.execute(f'alter schema "{name}{NEXT}" rename to "{name}"')
        except BaseException:
            con.execute("rollback")
            raise
        con.execute("commit")  # readers see the old schemas or the new ones, never a mix
        _drop_retired(con, pg)
    except psycopg.Error as exc:
        con.execute("reset lock_timeout")
        raise PublishError(
            f"publishing to the {pg.served_prefix}* schemas failed, the served data is unchanged: {exc}"
        ) from exc
    con.execute("reset lock_timeout")
    result.seconds = time.monotonic() - started
    log.info(
        "published run %s to %s: %d tables in %.1fs", record.run_id, result.where, len(result.tables), result.seconds
    )
    return result


NEXT = "__next"
"""The suffix of the schemas a PostgreSQL publish builds before it swaps them in."""
RETIRED = "__retired_"
"""The suffix of a previous night's schemas, swapped out and dropped once no reader holds them."""


def swap_namespaces(con: Connection, settings: Settings, schemas: tuple[str, ...], record: RunResult) -> PublishResult:
    """Spark with Iceberg: copy what changed of ``schemas`` (tables and views, as Iceberg tables)
    into ``<prefix><schema>__next`` namespaces, then move every table of them to
    ``<prefix><schema>`` in one transaction of the catalog database, the previous night's copies
    of them aside. What readers have as tonight holds it (withheld, or found unchanged by the data
    diff) stays where it is: the publish costs what changed. Raises PublishError; readers then
    keep what they had.

    Iceberg's JDBC catalog keeps one row per table (its namespace, name and current metadata
    file), and renaming a table is an update of that row (as Iceberg's own ``renameTable`` does):
    updating the rows of every moved table in one transaction is an atomic switch of the whole
    night, which Iceberg's per-table commits cannot give. Readers never block it (Iceberg readers
    hold no locks); a reader still reading a retired table keeps its files, which are purged
    ``DUSK_SPARK_KEEP_RETIRED`` nights later."""
    import sqlalchemy as sa

    from dusk.spark import catalog_config

    started = time.monotonic()
    check_schemas(schemas)
    spark = settings.spark
    served = {schema: spark.served_prefix + schema for schema in (*schemas, ABOUT)}
    result = PublishResult(
        where=f"{settings.warehouse_label} ({spark.served_prefix}*)", run_id=record.run_id, seconds=0.0
    )
    engine = sa.create_engine(catalog_config(settings)["uri"])
    try:
        for name in served.values():  # a run killed while publishing left its copy: nobody reads it
            _drop_namespace(con, f"{name}{NEXT}")
        had = {schema: set(table_names(con, name)) for schema, name in served.items()}
        available = {f"{schema}.{table}" for schema, tables in had.items() for table in tables}
        kept = Kept(
            _withheld(record) | _reusable(record),
            lambda schema: f'"{served[schema]}"',
            available,
            _withheld(record),
            reuse=True,
        )
        _fill(con, schemas, record, result, started, lambda schema: f'"{served[schema]}{NEXT}"', kept)
        new = {schema: set(table_names(con, f"{name}{NEXT}")) for schema, name in served.items()}
        stays = {tuple(relation.split(".", 1)) for relation in result.kept + result.reused}
        retired = f"{RETIRED}{int(time.time())}"
        moves = []  # (namespace, table, to namespace), in order
        for schema, name in served.items():
            for table in sorted(t for t in had[schema] if (schema, t) not in stays):
                moves.append((name, table, f"{name}{retired}"))  # rewritten tonight, or no longer published
            moves += [(f"{name}{NEXT}", table, name) for table in sorted(new[schema])]
        for namespace in sorted({to for _, _, to in moves}):  # where tables move to exists before
            con.execute(f'create schema if not exists "{namespace}"')
        with engine.begin() as catalog:  # one transaction: readers see the old night or the new one
            for namespace, table, to in moves:
                catalog.execute(
                    sa.text(
                        "update iceberg_tables set table_namespace = :to "
                        "where catalog_name = :c and table_namespace = :ns and table_name = :t"
                    ),
                    {"to": to, "ns": namespace, "t": table, "c": spark.catalog_name},
                )
    except Exception as exc:
        engine.dispose()
        raise PublishError(
            f"publishing to the {spark.served_prefix}* namespaces failed, the served data is unchanged: {exc}"
        ) from exc
    try:  # published: the emptied copies go, a retired night that cannot be purged now goes later
        for name in served.values():
            _drop_namespace(con, f"{name}{NEXT}")
        _drop_retired_namespaces(con, engine, spark.catalog_name, spark.served_prefix, spark.keep_retired)
    except Exception as exc:
        log.warning("publish: the retired served tables are purged by a later publish: %s", exc)
    finally:
        engine.dispose()
    result.seconds = time.monotonic() - started
    log.info(
        "published run %s to %s: %d tables in %.1fs", record.run_id, result.where, len(result.tables), result.seconds
    )
    return result


def _tables_of(con: duckdb.DuckDBPyConnection, database: str) -> set[str]:
    """``schema.table`` of every table of an attached DuckDB database."""
    rows = con.execute(
        "select table_schema || '.' || table_name from information_schema.tables where table_catalog = ?", [database]
    ).fetchall()
    return {str(name) for (name,) in rows}


def _withheld(record: RunResult) -> set[str]:
    """The relations readers keep at the last published night (a partial dbt night's)."""
    return set(record.dbt.withheld_relations) if record.dbt is not None else set()


def _reusable(record: RunResult) -> set[str]:
    """The relations readers have as tonight holds them (the data diff found them identical, or
    not rebuilt since readers got them): not copied again."""
    return {d.relation for d in record.diff if d.identical or d.status == UNCHANGED}


def _kept_on_server(con: Connection, record: RunResult, served: dict[str, str]) -> Kept | None:
    """PostgreSQL and Spark: the withheld relations come from the served schemas/namespaces."""
    withheld = _withheld(record)
    if not withheld:
        return None
    available = {f"{schema}.{table}" for schema, name in served.items() for table in table_names(con, name)}
    return Kept(withheld, lambda schema: f'"{served[schema]}"', available, withheld)


def _drop_namespace(con: Connection, namespace: str) -> None:
    """Drop a namespace and its tables with their files (Spark drops no namespace that holds tables)."""
    for table in table_names(con, namespace):
        con.execute(f'drop table if exists "{namespace}"."{table}" purge')
    con.execute(f'drop schema if exists "{namespace}"')


def _drop_retired_namespaces(con: Connection, engine: Any, catalog: str, prefix: str, keep: int) -> None:
    """Purge the served namespaces swapped out more than ``keep`` nights ago."""
    import sqlalchemy as sa

    with engine.connect() as db:
        names = {
            str(n)
            for (n,) in db.execute(
                sa.text(
                    "select table_namespace from iceberg_tables where catalog_name = :c union "
                    "select namespace from iceberg_namespace_properties where catalog_name = :c"
                ),
                {"c": catalog},
            )
        }
    retired = {n: n.rsplit(RETIRED, 1)[1] for n in names if n.startswith(prefix) and RETIRED in n}
    kept = set(sorted(set(retired.values()))[-keep:]) if keep else set()
    for name, night in sorted(retired.items()):
        if night not in kept:
            _drop_namespace(con, name)


def _drop_retired(con: Connection, pg: PostgresSettings) -> None:
    """Drop the previous nights' schemas that no reader holds any more. A reader's open
    transaction keeps its tables locked: the first schema that waits past the lock timeout stops
    the dropping (the others of its night are likely held too), and a later publish tries again,
    so a held reader costs the night one lock timeout here, not one per schema."""
    pattern = pg.served_prefix.replace("_", "\\_") + "%" + RETIRED.replace("_", "\\_") + "%"
    retired = con.execute("select nspname from pg_namespace where nspname like ? order by 1", [pattern]).fetchall()
    for (name,) in retired:
        try:
            con.execute(f'drop schema "{name}" cascade')
        except psycopg.errors.LockNotAvailable:
            log.warning("publish: a reader still holds %s; it is dropped by a later publish", name)
            return


@dataclass
class Kept:
    """Relations readers keep as they have them (a partial dbt night's withheld ones, and those
    tonight left as they were), taken from where readers read now, ``current(schema)``, when
    ``available`` there: copied, or with ``reuse`` left where they are (the copy being built
    already holds them)."""

    relations: set[str]
    current: Callable[[str], str]
    available: set[str]
    withheld: set[str]
    reuse: bool = False


def _fill(
    con: Connection,
    schemas: tuple[str, ...],
    record: RunResult,
    result: PublishResult,
    started: float,
    into: Callable[[str], str],
    kept: Kept | None = None,
) -> None:
    """Copy ``schemas`` into ``into(schema)``, close the copy's ledger, and say which run it holds
    (``into(ABOUT)``)."""
    _copy(con, schemas, result, into, kept)
    if LEDGER in schemas:
        result.seconds = time.monotonic() - started
        _close_served_ledger(con, record, result, into(LEDGER))
    con.execute(f"create schema if not exists {into(ABOUT)}")
    con.execute(
        f"create table {into(ABOUT)}.about as "
        "select cast(? as varchar) as run_id, cast(? as timestamp) as published_at",
        [record.run_id, datetime.now(UTC).replace(tzinfo=None)],
    )


def _copy(
    con: Connection,
    schemas: tuple[str, ...],
    result: PublishResult,
    into: Callable[[str], str],
    kept: Kept | None = None,
) -> None:
    """Copy the schemas' tables and views, as tables, into ``into(schema)`` (created here); a
    relation of ``kept`` that readers have is taken from their copy instead (a withheld one
    readers lack is left out: it never passed; any other readers lack is copied from tonight's)."""
    found = [(schema, table) for schema in schemas for table in table_names(con, schema)]
    missing = sorted(set(schemas) - {s for s, _ in found})
    if missing:
        log.warning("publish: the warehouse has no schema %s yet; published without it", ", ".join(missing))
    for schema in sorted({s for s, _ in found}):
        con.execute(f"create schema if not exists {into(schema)}")
    published: list[tuple[str, str]] = []  # (schema.table, where readers will read it)
    for schema, table in found:
        name = f"{schema}.{table}"
        source = f'"{schema}"."{table}"'
        if kept is not None and name in kept.relations:
            if name in kept.available:
                (result.kept if name in kept.withheld else result.reused).append(name)
                source = f'{kept.current(schema)}."{table}"'
            elif name in kept.withheld:
                log.warning("publish: %s is withheld and was never published: readers do not get it", name)
                continue
        where = f'{into(schema)}."{table}"'
        if name in result.reused + result.kept and kept is not None and kept.reuse:
            where = source  # left where readers have it
        else:
            con.execute(f"create table {where} as select * from {source}")
        published.append((name, where))
    # every published table's rows in one statement: on Spark each statement is a job of its own
    # (~0.1 s apiece on the demo's 46 tables), however small the table
    counts = [f"select {i} as i, count(*) as n from {where}" for i, (_, where) in enumerate(published)]
    rows = dict(con.execute(" union all ".join(counts)).fetchall()) if counts else {}
    for i, (name, _) in enumerate(published):
        result.tables[name] = int(rows[i])


def _close_served_ledger(con: Connection, record: RunResult, result: PublishResult, schema: str) -> None:
    """The served ledger (``schema``) says what readers hold: tonight published, and the run as
    it ended (alerting and the report come later and never change its status)."""
    record.published = result
    try:
        ledger.step(con, record, "publish", result.where, "ok", result.seconds, 1, schema=schema)
        ledger.close_run(con, record, schema=schema)
    finally:
        record.published = None


def published_run(served: Path) -> str | None:
    """The run id the served DuckDB file holds (None when nothing was published yet)."""
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
