"""`dusk migrate --to postgres|spark`: move an installation's DuckDB warehouse to PostgreSQL or to
Spark's Iceberg tables, or its PostgreSQL warehouse to Spark, keeping what cannot be rebuilt from
the sources.

What moves, table by table:

- every declared source's raw dataset (``raw_<source>``), with dlt's own bookkeeping: the
  pipeline state (incremental cursors, CDC slot positions), the load history and the stored
  schemas, so the next night goes on where the last one stopped; a files source's ledger of
  loaded files is a raw table too;
- ``snapshots`` (the SCD2 history: it cannot be rebuilt from sources that keep no history);
- the run ledger (``dusk_ledger``) and the PII salt (``dusk_private``), so hashes stay the same.

Models (staging, intermediate, marts, seeds) are not moved: the next night on the new engine
builds them from raw, and an incremental model equals its rebuild (invariant 2). A stream's
acknowledgements live in the stream server.

To PostgreSQL the move is one transaction, dlt's tables copied like the others, and dlt's working
folder stays where it is.

To Spark every table becomes an Iceberg table in the catalog dlt and Spark share, written by
pyiceberg (the writer dlt uses), a raw table where dlt would have put it. On a lake dlt keeps its
bookkeeping as files, not tables: each raw dataset gets them in dlt's own layout (the dataset's
``init`` file, ``_dlt_pipeline_state``, ``_dlt_version`` and ``_dlt_loads``), written from the
DuckDB rows and read back through dlt. A files source's ``_file`` column becomes
``_source_file``, its name on Spark (Iceberg reserves ``_file``), in the data and in dlt's stored
schema. The moved sources' dlt working folders are then cleared (a pending load refuses the
move): the next night takes state and schemas from the lake, as dlt does on a new machine. Times
without a zone outside raw (the ledger's, the snapshots') become the UTC instants they stand for,
the type Spark gives its own tables; raw keeps dlt's types. Iceberg has no transaction over
several tables: a move that fails purges what it had created. A PostgreSQL warehouse is read
through DuckDB's postgres extension.

Exact or loud: a column type the copy could not hold exactly stops the move naming it, and every
copied table is compared with its original, row for row, before the move is kept.
"""

from __future__ import annotations

import base64
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from psycopg.conninfo import make_conninfo

from dusk.settings import Settings
from dusk.warehouse import LEDGER, PRIVATE, Warehouse, open_warehouse
from ingestion.declaration import SourceSpec, load_sources
from ingestion.extensions import load_extension

log = logging.getLogger(__name__)

ENGINES = ("postgres", "spark")
"""Engines a warehouse can move to."""
MOVES = {"duckdb": ("postgres", "spark"), "postgres": ("spark",)}
"""The engines each engine's warehouse can move to."""
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
DLT_STATE, DLT_SCHEMAS, DLT_LOADS = "_dlt_pipeline_state", "_dlt_version", "_dlt_loads"
"""dlt's own tables in a raw dataset: files in dlt's layout on a lake."""


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
    """Copy the warehouse's raw datasets, snapshots, ledger and salt into the (empty) warehouse of
    engine ``to``; raise MigrateError, leaving both as they were, when it cannot."""
    started = time.monotonic()
    if to not in ENGINES:
        raise MigrateError(f"dusk migrate moves a warehouse to {', '.join(ENGINES)}, not {to!r}")
    if to not in MOVES.get(settings.target, ()):
        raise MigrateError(
            "dusk migrate moves a DuckDB warehouse to PostgreSQL or Spark, and a PostgreSQL one to Spark; "
            f"this installation's is {settings.target} (DUSK_TARGET)"
        )
    source = open_warehouse(settings)
    if not source.exists():
        raise MigrateError(f"no warehouse at {source.describe()} to move")
    specs = list(load_sources(settings.sources_file).values())
    schemas = sorted({spec.dataset for spec in specs} | set(KEPT))
    target = open_warehouse(replace(settings, target=to))
    moved = Moved(where=target.describe(), left=source.describe())
    if to == "spark":
        _to_lake(settings, target, specs, schemas, moved)
    else:
        with target.connect():
            pass  # created on first use
        _to_postgres(settings, schemas, moved)
    moved.seconds = time.monotonic() - started
    log.info("migrated %d tables to %s in %.1fs", len(moved.tables), moved.where, moved.seconds)
    return moved


def _to_postgres(settings: Settings, schemas: list[str], moved: Moved) -> None:
    """Copy the tables into the PostgreSQL warehouse (``settings.postgres``, empty) in one
    transaction, each compared with its original before it commits."""
    with duckdb.connect() as con:
        _attach_source(con, settings)
        load_extension(con, "duckdb_extension_postgres_scanner")
        tables = _tables(con, schemas, EXACT)
        con.execute("attach '" + _dsn(settings).replace("'", "''") + "' as dest (type postgres)")
        try:
            taken = con.execute(
                "select table_schema || '.' || table_name from information_schema.tables "
                f"where table_catalog = 'dest' and table_schema in ({', '.join('?' for _ in schemas)}) order by 1",
                schemas,
            ).fetchall()
            _refuse_taken(moved.where, [t for (t,) in taken], "an empty database (DUSK_PG_DATABASE)")
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


def _refuse_taken(where: str, taken: list[str], fix: str) -> None:
    """Refuse a move into a warehouse that already holds some of what would move."""
    if taken:
        more = " and more" if len(taken) > 5 else ""
        raise MigrateError(f"{where} already holds {', '.join(taken[:5])}{more}: migrate into {fix}")


def _same(con: duckdb.DuckDBPyConnection, schema: str, table: str, original: str, copy: str) -> None:
    """Compare a copy with its original both ways (as multisets of rows); raise if any row differs."""
    for left, right in ((original, copy), (copy, original)):
        (differ,) = con.execute(  # type: ignore[misc]
            f"select count(*) from (select * from {left} except all select * from {right})"
        ).fetchone()
        if differ:
            raise MigrateError(f"{schema}.{table}: {differ} row(s) differ after the copy; nothing was moved")


def _dsn(settings: Settings) -> str:
    """The PostgreSQL warehouse's connection string (quoted by psycopg: a password may hold anything)."""
    pg = settings.postgres
    return make_conninfo(host=pg.host, port=pg.port, user=pg.user, dbname=pg.database, password=pg.password)


def _attach_source(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Attach the warehouse being moved, read-only, as ``wh``, and use it."""
    if settings.target == "postgres":
        load_extension(con, "duckdb_extension_postgres_scanner")
        con.execute("attach '" + _dsn(settings).replace("'", "''") + "' as wh (type postgres, read_only)")
    else:
        con.execute("attach '" + str(settings.warehouse).replace("'", "''") + "' as wh (read_only)")
    con.execute("use wh")


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
    if con.execute("select type from duckdb_databases() where database_name = 'wh'").fetchone() == ("postgres",):
        # DuckDB reads a numeric wider than 38 digits, or one of no declared precision, as a double
        numeric = con.execute(
            "select * from postgres_query('wh', 'select table_schema, table_name, column_name, "
            "coalesce(numeric_precision::text, ''none'') from information_schema.columns "
            "where data_type = ''numeric'' and (numeric_precision is null or numeric_precision > 38)')"
        ).fetchall()
        inexact += [f"{s}.{t}.{c} (NUMERIC, precision {p})" for s, t, c, p in numeric if s in schemas]
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
    _same(con, schema, table, original, f"dest.{name}")
    (rows,) = con.execute(f"select count(*) from {original}").fetchone()  # type: ignore[misc]
    return int(rows)


def _to_lake(source: Settings, warehouse: Warehouse, specs: list[SourceSpec], schemas: list[str], moved: Moved) -> None:
    """Copy the tables of the ``source`` warehouse into Iceberg tables of the Spark ``warehouse``'s
    catalog, each read back and compared with its original, and dlt's bookkeeping of each raw
    dataset into its files; then clear the moved sources' dlt working folders. On any failure
    purge what was created and raise."""
    from dusk.spark import iceberg_catalog, prepare_catalog

    settings = warehouse.settings
    work_dir = settings.pipelines_dir
    _refuse_pending(work_dir, specs)
    prepare_catalog(settings)
    catalog = iceberg_catalog(settings)
    created: list[str] = []
    datasets: list[Any] = []
    lakes: dict[str, tuple[SourceSpec, Any]] = {}
    try:
        with ExitStack() as stack:
            con = stack.enter_context(duckdb.connect())
            con.execute("set TimeZone = 'UTC'")
            _attach_source(con, source)
            tables = _tables(con, schemas, ICEBERG_EXACT)
            present = {s for s, _ in tables}
            # dlt's view of each raw dataset on the lake, from a working folder of the move's own
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            target = replace(warehouse.target(), work_dir=scratch)
            lakes = {
                spec.dataset: (spec, stack.enter_context(_dlt_client(spec, target)))
                for spec in specs
                if spec.dataset in present
            }
            taken = [
                ".".join(identifier)
                for schema in sorted(present)
                if (schema,) in catalog.list_namespaces()
                for identifier in catalog.list_tables(schema)
            ] + [client.dataset_path for _, client in lakes.values() if client.is_storage_initialized()]
            _refuse_taken(
                moved.where, taken, "an empty catalog and lake (DUSK_ICEBERG_CATALOG_URI, DUSK_ICEBERG_WAREHOUSE)"
            )
            for _, client in lakes.values():
                client.initialize_storage()
                datasets.append(client)
            lake_hints = {"table_format": warehouse.table_format, "x-merge-strategy": warehouse.merge_strategy}
            renames = {
                spec.dataset: {"_file": warehouse.file_column} for spec, _ in lakes.values() if spec.kind == "files"
            }
            for schema, table in tables:
                if table.startswith("_dlt_"):
                    continue
                catalog.create_namespace_if_not_exists(schema)
                created.append(f"{schema}.{table}")
                location = lakes[schema][1].get_open_table_location("iceberg", table) if schema in lakes else None
                moved.tables[f"{schema}.{table}"] = _copy_to_lake(
                    con, catalog, schema, table, location, renames.get(schema, {})
                )
            for dataset, (spec, client) in lakes.items():
                held = {t for s, t in tables if s == dataset}
                _carry_dlt_state(con, client, spec, held, lake_hints, renames.get(dataset, {}))
    except BaseException:
        for name in reversed(created):
            if catalog.table_exists(name):
                catalog.purge_table(name)
        for client in datasets:
            client.drop_storage()
        raise
    finally:
        catalog.engine.dispose()
    for spec, _ in lakes.values():
        shutil.rmtree(work_dir / spec.name, ignore_errors=True)


def _refuse_pending(work_dir: Path, specs: list[SourceSpec]) -> None:
    """Refuse the move while a source has a load dlt has not finished (it would be lost with the
    working folder the move clears)."""
    import dlt

    pending = [
        spec.name
        for spec in specs
        if (work_dir / spec.name).is_dir()
        and dlt.attach(pipeline_name=spec.name, pipelines_dir=str(work_dir)).has_pending_data
    ]
    if pending:
        raise MigrateError(
            f"source(s) {', '.join(pending)} have a load dlt has not finished; nothing was moved. "
            "Fix: run `dusk run` (it finishes the pending load first), then migrate."
        )


@contextmanager
def _dlt_client(spec: SourceSpec, target: Any) -> Iterator[Any]:
    """dlt's filesystem client of the source's raw dataset on the lake (dlt's layout and paths)."""
    from ingestion.run import make_pipeline

    with make_pipeline(spec, target).destination_client() as client:
        yield client


def _copy_to_lake(
    con: duckdb.DuckDBPyConnection,
    catalog: Any,
    schema: str,
    table: str,
    location: str | None,
    renames: dict[str, str],
) -> int:
    """Copy one table into a new Iceberg table (at ``location``; None: the catalog's default) and
    compare the copy with it both ways; its rows."""
    import pyarrow as pa

    original = con.execute(f'select * from "{schema}"."{table}"').to_arrow_table()
    original = original.rename_columns([renames.get(name, name) for name in original.column_names])
    data = pa.table(
        [_lake_column(col, raw=schema.startswith("raw_")) for col in original.columns], names=original.column_names
    )
    lake = catalog.create_table(f"{schema}.{table}", schema=data.schema, location=location)
    lake.append(data)
    con.register("moved_original", data)
    con.register("moved_copy", lake.scan().to_arrow())
    try:
        _same(con, schema, table, "moved_original", "moved_copy")
    finally:
        con.unregister("moved_original")
        con.unregister("moved_copy")
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


def _carry_dlt_state(
    con: duckdb.DuckDBPyConnection,
    client: Any,
    spec: SourceSpec,
    held: set[str],
    lake_hints: dict[str, Any],
    renames: dict[str, str],
) -> None:
    """Write a raw dataset's dlt bookkeeping (pipeline states, stored schemas, loads) from its
    DuckDB tables (those of them in ``held``) into the files dlt keeps on a lake, in dlt's layout
    and encoding, and then each schema as the lake holds it (:func:`_lake_schema`) as its newest
    version. Read back through dlt: the newest state and schema must be the ones it will restore,
    or the move stops."""
    from dlt.common import json

    dataset = f'"{spec.dataset}"'

    def put(table: str, name: str, doc: dict[str, Any]) -> None:
        folder = client.get_table_dir(table)
        client.fs_client.makedirs(folder, exist_ok=True)
        client.fs_client.write_text(client.pathlib.join(folder, name), json.dumps(doc), encoding="utf-8")

    def rows(table: str, columns: str, order: str) -> list[tuple[Any, ...]]:
        return (
            con.execute(f"select {columns} from {dataset}.{table} order by {order}").fetchall() if table in held else []
        )

    states = rows(
        DLT_STATE,
        "version, engine_version, pipeline_name, state, created_at, version_hash, _dlt_load_id",
        "_dlt_load_id",
    )
    for version, engine, pipeline, state, created, hashed, load_id in states:
        doc = {
            "version": version,
            "engine_version": engine,
            "pipeline_name": pipeline,
            "state": state,
            "created_at": created,
            "version_hash": hashed,
            "_dlt_load_id": load_id,
        }
        put(DLT_STATE, f"{pipeline}__{load_id}__{_hex(hashed)}.jsonl", doc)
    versions = rows(
        DLT_SCHEMAS, "version_hash, schema_name, version, engine_version, inserted_at, schema", "inserted_at"
    )
    newest: dict[str, str] = {}
    for hashed, name, version, engine, inserted, stored in versions:
        doc = {
            "version_hash": hashed,
            "schema_name": name,
            "version": version,
            "engine_version": engine,
            "inserted_at": inserted,
            "schema": stored,
        }
        put(DLT_SCHEMAS, f"{name}__{inserted.timestamp()}__{_hex(hashed)}.jsonl", doc)
        newest[name] = stored
    for name, stored in newest.items():
        lake = _lake_schema(json.loads(stored), lake_hints, renames)
        now = time.time()
        doc = {
            "version_hash": lake["version_hash"],
            "schema_name": name,
            "version": lake["version"],
            "engine_version": lake["engine_version"],
            "inserted_at": datetime.fromtimestamp(now, UTC),
            "schema": json.dumps(lake),
        }
        put(DLT_SCHEMAS, f"{name}__{now}__{_hex(lake['version_hash'])}.jsonl", doc)
        newest[name] = doc["schema"]
    for load_id, name, status, inserted, hashed in rows(
        DLT_LOADS, "load_id, schema_name, status, inserted_at, schema_version_hash", "load_id"
    ):
        doc = {
            "load_id": load_id,
            "schema_name": name,
            "status": status,
            "inserted_at": inserted.isoformat(),
            "schema_version_hash": hashed,
        }
        put(DLT_LOADS, f"{name}__{load_id}.jsonl", doc)

    restored = client.get_stored_state(spec.name) if states else None
    if states and (restored is None or (restored._dlt_load_id, restored.state) != (states[-1][6], states[-1][3])):
        raise MigrateError(f"{spec.dataset}: dlt does not read back the state it was given; nothing was moved")
    for name, stored in newest.items():
        schema = client.get_stored_schema(name)
        if schema is None or json.loads(schema.schema) != json.loads(stored):
            raise MigrateError(f"{spec.dataset}: dlt does not read back its schema {name}; nothing was moved")


def _lake_schema(stored: dict[str, Any], lake_hints: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """A dlt schema (as stored) as the lake's first night would find it, had dlt written it there:
    every data table with the lake's table format, a merged one with the lake's merge strategy
    (hints dlt's loads set; a database source plans its night from the schema before loading),
    and the columns in ``renames`` under their lake names; the version bumped."""
    from dlt.common.schema import Schema

    schema = Schema.from_dict(stored)
    for name, table in schema.tables.items():
        if name.startswith("_dlt_"):
            continue
        table["table_format"] = lake_hints["table_format"]
        if table.get("write_disposition") == "merge":
            table["x-merge-strategy"] = lake_hints["x-merge-strategy"]  # type: ignore[typeddict-unknown-key]
        table["columns"] = {
            renames.get(column, column): {**hints, "name": renames.get(column, column)}
            for column, hints in table["columns"].items()
        }
    return schema.to_dict(bump_version=True)  # type: ignore[return-value]


def _hex(version_hash: str | None) -> str | None:
    """A dlt version hash (base64) as dlt puts it in a file name (None, as dlt writes it, for none)."""
    return base64.b64decode(version_hash).hex() if version_hash else None
