"""Database sources (SQLite, PostgreSQL, MySQL/MariaDB) declared in sources.yml.

Each table is read with dlt's ``sql_table`` on the pyarrow backend (Arrow batches, never row by
row), incrementally on its cursor column and merged on its primary key. dlt keeps the cursor in its
state, which it commits in the warehouse together with the data.

Hard deletes leave no trace in an ``updated_at`` cursor, so tables declared with
``deletes: key_diff`` get a second, cheap pass: the primary keys in the source are compared with the
live keys in raw, and every key that vanished is merged back into raw with its last known values,
``_is_deleted = true`` and ``_deleted_at`` set to the detection time. Raw therefore holds every row
the source ever had, live or deleted, and staging and snapshots can close deleted rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dlt
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from dlt.common.destination.exceptions import DestinationUndefinedEntity
from dlt.extract.source import DltSource
from dlt.sources.sql_database import sql_table

from ingestion.config import SourceSpec, TableSpec

DELETED_FLAG = "_is_deleted"
DELETED_AT = "_deleted_at"
CHUNK_SIZE = 50_000
_DELETED_AT_TYPE = pa.timestamp("us", tz="UTC")


class DeleteGuardError(RuntimeError):
    """Key-diff would mark more rows deleted than the table allows (an emptied or broken source)."""


@dataclass(frozen=True)
class DeletedRows:
    """Rows of one raw table whose keys have vanished from the source."""

    table: str
    rows: pa.Table


def _conform(rows: pa.Table, columns: dict[str, Any]) -> pa.Table:
    """Give rows read back from raw the nullability the source's reflected columns declare."""
    fields = [f.with_nullable(columns.get(f.name, {}).get("nullable", True)) for f in rows.schema]
    return rows.cast(pa.schema(fields))


def _mark_live(batch: Any) -> Any:
    """Add the delete flag columns to an extracted Arrow batch: every extracted row is live."""
    n = batch.num_rows
    batch = batch.append_column(DELETED_FLAG, pa.array([False] * n, pa.bool_()))
    return batch.append_column(DELETED_AT, pa.nulls(n, _DELETED_AT_TYPE))


def _exclude(columns: tuple[str, ...]) -> Any:
    def adapt(table: sa.Table) -> sa.Table:
        for name in columns:
            if name in table.columns:
                table._columns.remove(table.columns[name])
        return table

    return adapt


def database_source(
    spec: SourceSpec,
    credentials: str,
    deleted: list[DeletedRows],
    only: set[str] | None = None,
) -> DltSource:
    """The dlt source for one declared database: one incremental resource per table, plus one
    resource per table that carries the deletes found by :func:`find_deleted_rows`."""
    tables = [t for t in spec.tables if only is None or t.name in only]

    @dlt.source(name=spec.name, max_table_nesting=0)
    def source() -> Iterator[Any]:
        reflected: dict[str, Any] = {}
        for table in tables:
            incremental: Any = dlt.sources.incremental(table.cursor, range_start="closed") if table.cursor else None
            resource = sql_table(
                credentials=credentials,
                table=table.name,
                backend="pyarrow",
                chunk_size=CHUNK_SIZE,
                reflection_level="full_with_precision",
                incremental=incremental,
                primary_key=table.primary_key,
                write_disposition=table.write_disposition,
                table_adapter_callback=_exclude(table.exclude_columns) if table.exclude_columns else None,
            )
            if table.deletes == "key_diff":
                resource.add_map(_mark_live)
                reflected[table.name] = resource.compute_table_schema()["columns"]
            yield resource
        for d in deleted:
            if d.rows.num_rows:
                # The same column hints as the live rows: dlt writes both into one file per table.
                yield dlt.resource(
                    [_conform(d.rows, reflected[d.table])],
                    name=f"{d.table}__deletes",
                    table_name=d.table,
                    write_disposition="merge",
                    primary_key=spec.table(d.table).primary_key,
                    columns=reflected[d.table],
                )

    return source()


def source_keys(engine: sa.Engine, table: TableSpec) -> pa.Array:
    """Every primary key in the source table, streamed in chunks into one Arrow array."""
    chunks: list[pa.Array] = []
    reflected = sa.Table(table.name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as con:
        result = con.execution_options(stream_results=True, yield_per=CHUNK_SIZE).execute(
            sa.select(reflected.c[table.primary_key])
        )
        for part in result.partitions():
            chunks.append(pa.array([row[0] for row in part]))
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.int64())


def _literal(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"key-diff supports integer and text primary keys, got {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _arrow(cursor: Any) -> pa.Table:
    table = cursor.arrow()
    if table is None:
        raise RuntimeError("the destination returned no result set")
    return table


def find_deleted_rows(
    pipeline: dlt.Pipeline, engine: sa.Engine, spec: SourceSpec, table: TableSpec, now: datetime | None = None
) -> DeletedRows:
    """Compare the source's keys with raw's live keys; return raw's rows for the vanished keys,
    flagged deleted. Raises DeleteGuardError when more than ``max_delete_share`` would go."""
    now = now or datetime.now(UTC)
    bookkeeping = (DELETED_FLAG, DELETED_AT)
    empty = DeletedRows(table.name, pa.table({}))
    try:
        with pipeline.sql_client() as client:
            qualified = client.make_qualified_table_name(table.name)
            pk = client.escape_column_name(table.primary_key)
            flag = client.escape_column_name(DELETED_FLAG)
            with client.execute_query(f"select {pk} from {qualified} where {flag} is not true") as cur:
                live = _arrow(cur).column(0)
            if len(live) == 0:
                return empty
            current = source_keys(engine, table)
            gone = pc.filter(live, pc.invert(pc.is_in(live, value_set=current.cast(live.type)))).to_pylist()
            if not gone:
                return empty
            if len(gone) > table.max_delete_share * len(live):
                raise DeleteGuardError(
                    f"source {spec.name!r}, table {table.name!r}: {len(gone)} of {len(live)} live rows are gone "
                    f"from the source ({len(current)} keys left), more than max_delete_share="
                    f"{table.max_delete_share}. Is the source table emptied or the connection pointing "
                    "elsewhere? Nothing was marked deleted; raise max_delete_share in sources.yml if it is real."
                )
            parts = []
            for i in range(0, len(gone), 1000):
                keys = ", ".join(_literal(k) for k in gone[i : i + 1000])
                with client.execute_query(f"select * from {qualified} where {pk} in ({keys})") as cur:
                    part = _arrow(cur)
                parts.append(
                    part.drop_columns([c for c in part.column_names if c.startswith("_dlt_") or c in bookkeeping])
                )
    except DestinationUndefinedEntity:
        return empty  # first load: nothing in raw yet, so nothing can have been deleted
    rows = pa.concat_tables(parts, promote_options="default")
    rows = rows.append_column(DELETED_FLAG, pa.array([True] * rows.num_rows, pa.bool_()))
    rows = rows.append_column(DELETED_AT, pa.array([now] * rows.num_rows, _DELETED_AT_TYPE))
    return DeletedRows(table.name, rows)
