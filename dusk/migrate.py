"""`dusk migrate --to postgres|spark`: move an installation's DuckDB warehouse to PostgreSQL or to
Spark's Iceberg tables, keeping what cannot be rebuilt from the sources.

What moves, table by table:

- every declared source's raw dataset (``raw_<source>``); to PostgreSQL with dlt's own tables in
  it (the pipeline state with the incremental cursors and CDC slot positions, the load history,
  the stored schemas), so the next night goes on where the last one stopped; a files source's
  ledger of loaded files is a raw table too;
- ``snapshots`` (the SCD2 history: it cannot be rebuilt from sources that keep no history);
- the run ledger (``dusk_ledger``) and the PII salt (``dusk_private``), so hashes stay the same.

Models (staging views, intermediate, marts, seeds) are not moved: the next night on the new engine
builds them from raw, and an incremental model equals its rebuild (invariant 2). A stream's
acknowledgements live in the stream server, and dlt's working folder stays where it is.

To PostgreSQL the move is one transaction. To Spark every table becomes an Iceberg table in the
catalog dlt and Spark share (written by pyiceberg, the writer dlt uses); Iceberg has no
transaction over several tables, so a failed move drops (purges) what it had created. dlt's own
tables stay behind there: on a lake dlt keeps its bookkeeping as files of its own layout, and the
pipeline state the next night needs is in dlt's working folder, which stays; that night's loads
write it to the lake. A files source's ``_file`` column becomes ``_source_file``, its name on
Spark (Iceberg reserves ``_file``). Times without a zone outside raw (the ledger's, the snapshots') become UTC
instants, the type Spark gives its own tables; raw keeps dlt's types.

Exact or loud: a column type the copy could not hold exactly stops the move naming it, and every
copied table is compared with its original, row for row, before the move is kept.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
from psycopg.conninfo import make_conninfo

from dusk.settings import Settings
from dusk.warehouse import LEDGER, PRIVATE, open_warehouse
from ingestion.declaration import load_sources
from ingestion.extensions import load_extension

log = logging.getLogger(__name__)

ENGINES = ("postgres", "spark")
"""Engines a DuckDB warehouse can move to."""
KEPT = ("snapshots", LEDGER, PRIVATE)
"""The schemas besides raw that hold what cannot be rebuilt."""
EXACT = re.compile(
    r"(BOOLEAN|TINYINT|SMALLINT|INTEGER|BIGINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|FLOAT|DOUBLE|VARCHAR|JSON|BLOB|"
    r"DATE|TIME|TIMESTAMP|TIMESTAMP WITH TIME ZONE|UUID|INTERVAL|DECIMAL\(\d+,\d+\))"
)
"""DuckDB column types PostgreSQL holds exactly through DuckDB's postgres extension (HUGEINT, for
one, would become a double: it is refused)."""
ICEBERG_EXACT = re.compile(
    r"(BOOLEAN|TINYINT|SMALLINT|INTEGER|BIGINT|UTINYINT|USMALLINT|UINTEGER|FLOAT|DOUBLE|VARCHAR|JSON|BLOB|"
    r"DATE|TIME|TIMESTAMP|TIMESTAMP WITH TIME ZONE|DECIMAL\(\d+,\d+\))"
)
"""DuckDB column types an Iceberg table holds exactly (small integers widened; JSON as text, as dlt
writes it on a lake). Iceberg has no unsigned 64-bit or 128-bit integer, no interval, no UUID
through pyarrow, and times in microseconds only: those are refused."""


class MigrateError(RuntimeError):
    """The warehouse was not moved; the message says why and what to do."""


@dataclass
class Moved:
    """What a migration moved."""

    where: str
    left: str
    tables: dict[str, int] = field(default_factory=dict)
    """Rows per ``schema.table``."""
    seconds: float = 0.0


def migrate(settings: Settings, to: str) -> Moved:
    """Copy the DuckDB warehouse's raw datasets, snapshots, ledger and salt into the (empty)
    warehouse of engine ``to``; raise MigrateError, leaving both as they were, when it cannot."""
    started = time.monotonic()
    if to not in ENGINES:
        raise MigrateError(f"dusk migrate moves a DuckDB warehouse to {', '.join(ENGINES)}, not {to!r}")
    if settings.target != "duckdb":
        raise MigrateError(
            f"dusk migrate moves the DuckDB warehouse (DUSK_TARGET=duckdb); this installation's is {settings.target}"
        )
    source = settings.warehouse
    if not source.exists():
        raise MigrateError(f"no DuckDB warehouse at {source} to move (DUSK_WAREHOUSE)")
    schemas = sorted({spec.dataset for spec in load_sources(settings.sources_file).values()} | set(KEPT))
    target = open_warehouse(replace(settings, target=to))
    moved = Moved(where=target.describe(), left=str(source))
    if to == "spark":
        files = {spec.dataset for spec in load_sources(settings.sources_file).values() if spec.kind == "files"}
        _to_lake(replace(settings, target=to), schemas, moved, {s: {"_file": target.file_column} for s in files})
        moved.seconds = time.monotonic() - started
        log.info("migrated %d tables to %s in %.1fs", len(moved.tables), moved.where, moved.seconds)
        return moved
    with target.connect():
        pass  # created on first use
    with duckdb.connect() as con:
        con.execute("attach '" + str(source).replace("'", "''") + "' as wh (read_only)")
        con.execute("use wh")
        load_extension(con, "duckdb_extension_postgres_scanner")
        tables = _tables(con, schemas, EXACT)
        pg = settings.postgres
        dsn = make_conninfo(host=pg.host, port=pg.port, user=pg.user, dbname=pg.database, password=pg.password)
        con.execute("attach '" + dsn.replace("'", "''") + "' as dest (type postgres)")
        try:
            taken = con.execute(
                "select table_schema || '.' || table_name from information_schema.tables "
                f"where table_catalog = 'dest' and table_schema in ({', '.join('?' for _ in schemas)}) order by 1",
                schemas,
            ).fetchall()
            if taken:
                raise MigrateError(
                    f"{moved.where} already holds {', '.join(t for (t,) in taken[:5])}"
                    f"{' and more' if len(taken) > 5 else ''}: migrate into an empty database (DUSK_PG_DATABASE)"
                )
            con.execute("begin")
            try:
                for schema in sorted({s for s, _ in tables}):
                    con.execute(f'create schema dest."{schema}"')
                for schema, table in tables:
                    moved.tables[f"{schema}.{table}"] = _copy(con, schema, table)
            except BaseException:
                con.execute("rollback")
                raise
            con.execute("commit")
        finally:
            con.execute("detach dest")
    moved.seconds = time.monotonic() - started
    log.info("migrated %d tables to %s in %.1fs", len(moved.tables), moved.where, moved.seconds)
    return moved


def _tables(con: duckdb.DuckDBPyConnection, schemas: list[str], exact: re.Pattern[str]) -> list[tuple[str, str]]:
    """The tables to move, after checking that every column's type moves exactly."""
    marks = ", ".join("?" for _ in schemas)
    columns = con.execute(
        "select table_schema, table_name, column_name, data_type from information_schema.columns "
        "join information_schema.tables using (table_catalog, table_schema, table_name) "
        f"where table_catalog = 'wh' and table_type = 'BASE TABLE' and table_schema in ({marks}) "
        "order by 1, 2",
        schemas,
    ).fetchall()
    inexact = [f"{s}.{t}.{c} ({kind})" for s, t, c, kind in columns if not exact.fullmatch(kind)]
    if inexact:
        raise MigrateError(
            f"these columns have types the other engine would not hold exactly: {', '.join(inexact)}. Nothing was "
            "moved. Fix: declare such source columns as text or decimal (columns: in sources.yml) and reload them."
        )
    return sorted({(s, t) for s, t, _, _ in columns})


def _copy(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> int:
    """Copy one table and compare the copy with it both ways; its row count."""
    name = f'"{schema}"."{table}"'
    original = f"wh.{name}"
    con.execute(f"create table dest.{name} as select * from {original}")
    for left, right in ((original, f"dest.{name}"), (f"dest.{name}", original)):
        (differ,) = con.execute(  # type: ignore[misc]
            f"select count(*) from (select * from {left} except all select * from {right})"
        ).fetchone()
        if differ:
            raise MigrateError(f"{schema}.{table}: {differ} row(s) differ after the copy; nothing was moved")
    (rows,) = con.execute(f"select count(*) from {original}").fetchone()  # type: ignore[misc]
    return int(rows)


def _to_lake(settings: Settings, schemas: list[str], moved: Moved, renames: dict[str, dict[str, str]]) -> None:
    """Copy the tables into Iceberg tables of the Spark warehouse's catalog, each read back and
    compared with its original; on any failure purge what was created and raise. ``renames``:
    per schema, columns that have another name on Spark (a files source's ``_file``, which Iceberg
    reserves for a metadata column, is ``_source_file`` there)."""
    from dusk.spark import iceberg_catalog, prepare_catalog

    prepare_catalog(settings)
    catalog = iceberg_catalog(settings)
    created: list[str] = []
    try:
        with duckdb.connect() as con:
            con.execute("set TimeZone = 'UTC'")
            con.execute("attach '" + str(settings.warehouse).replace("'", "''") + "' as wh (read_only)")
            con.execute("use wh")
            tables = [(s, t) for s, t in _tables(con, schemas, ICEBERG_EXACT) if not t.startswith("_dlt_")]
            taken = [
                ".".join(identifier)
                for schema in sorted({s for s, _ in tables})
                if (schema,) in catalog.list_namespaces()
                for identifier in catalog.list_tables(schema)
            ]
            if taken:
                raise MigrateError(
                    f"{moved.where} already holds {', '.join(taken[:5])}{' and more' if len(taken) > 5 else ''}: "
                    "migrate into an empty catalog (DUSK_ICEBERG_CATALOG_URI)"
                )
            try:
                for schema, table in tables:
                    catalog.create_namespace_if_not_exists(schema)
                    created.append(f"{schema}.{table}")
                    moved.tables[f"{schema}.{table}"] = _copy_to_lake(
                        con, catalog, settings, schema, table, renames.get(schema, {})
                    )
            except BaseException:
                for name in reversed(created):
                    if catalog.table_exists(name):
                        catalog.purge_table(name)
                raise
    finally:
        catalog.engine.dispose()


def _copy_to_lake(
    con: duckdb.DuckDBPyConnection, catalog: Any, settings: Settings, schema: str, table: str, renames: dict[str, str]
) -> int:
    """Copy one table into a new Iceberg table and compare the copy with it both ways; its rows."""
    import pyarrow as pa

    original = con.execute(f'select * from "{schema}"."{table}"').to_arrow_table()
    original = original.rename_columns([renames.get(name, name) for name in original.column_names])
    data = pa.table(
        [_lake_column(col, raw=schema.startswith("raw_")) for col in original.columns], names=original.column_names
    )
    # a folder of its own: dlt takes an existing folder named after a dataset for one it did not
    # set up, and refuses it; the catalog, not the folder, is what dlt and Spark find a table by
    location = f"{settings.iceberg_lake.rstrip('/')}/_migrated/{schema}/{table}"
    lake = catalog.create_table(f"{schema}.{table}", schema=data.schema, location=location)
    lake.append(data)
    copy = lake.scan().to_arrow()  # noqa: F841 (read by DuckDB)
    for left, right in (("data", "copy"), ("copy", "data")):
        (differ,) = con.execute(
            f"select count(*) from (select * from {left} except all select * from {right})"
        ).fetchone()  # type: ignore[misc]
        if differ:
            raise MigrateError(f"{schema}.{table}: {differ} row(s) differ after the copy; nothing was moved")
    return data.num_rows


def _lake_column(column: Any, raw: bool) -> Any:
    """A DuckDB column as Iceberg holds it: small and unsigned integers widened, JSON as text, and
    outside raw a time without a zone as the UTC instant it stands for (what Spark's own tables
    hold; raw keeps dlt's types, which dlt's next load checks)."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_int8(kind) or pa.types.is_int16(kind) or pa.types.is_uint8(kind) or pa.types.is_uint16(kind):
        return column.cast(pa.int32())
    if pa.types.is_uint32(kind):
        return column.cast(pa.int64())
    if isinstance(kind, pa.ExtensionType):  # DuckDB's JSON
        return column.cast(kind.storage_type)
    if pa.types.is_timestamp(kind) and kind.tz is None and not raw:
        return column.cast(pa.timestamp(kind.unit, tz="UTC"))
    return column
