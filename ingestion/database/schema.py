"""Raw's schema against the source's: widenings applied, a changed key applied when raw allows it,
the rest refused, named."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import dlt
import duckdb
import pyarrow as pa
from dlt.common.destination.exceptions import DestinationUndefinedEntity
from dlt.common.libs.pyarrow import py_arrow_to_table_schema_columns
from dlt.common.schema import Schema

from ingestion.database.columns import (
    is_bookkeeping,
)
from ingestion.database.scan import (
    SourceColumn,
    SourceSchemaError,
    dquote,
)
from ingestion.declaration import SourceSpec, TableSpec
from ingestion.extensions import raw_client


def _where(source: str, table: str) -> str:
    return f"source {source!r}, table {table!r}"


def _schema(pipeline: dlt.Pipeline) -> Schema:
    """dlt's default schema of ``pipeline``, as the pipeline holds it in memory. On every access,
    ``pipeline.default_schema`` reads the schema's file again when the copy in memory is unchanged
    (dlt's ``LiveSchemaStorage``): ~6 ms each, and planning asks several times a table (a quiet
    demo night 25 times). While planning, nothing but this pipeline writes that file (the run lock
    is held, and dlt's own run comes after), and what planning changes it saves through the
    pipeline, which keeps the copy in memory the same object, so the copy is the file."""
    live = getattr(pipeline.schemas, "live_schemas", {}).get(pipeline.default_schema_name)
    return live if live is not None else pipeline.default_schema


def _stored_columns(pipeline: dlt.Pipeline, table: str) -> dict[str, Any]:
    """The columns raw holds for ``table`` (from dlt's schema), without dlt's and our bookkeeping."""
    if not pipeline.default_schema_name:
        return {}
    stored = _schema(pipeline).tables.get(table, {}).get("columns", {})
    return {n: c for n, c in stored.items() if not is_bookkeeping(n)}


def _has_column(pipeline: dlt.Pipeline, table: str, column: str) -> bool:
    """True when dlt's schema has ``column`` in ``table``."""
    if not pipeline.default_schema_name:
        return False
    return column in _schema(pipeline).tables.get(table, {}).get("columns", {})


def check_schema(
    pipeline: dlt.Pipeline,
    spec: SourceSpec,
    table: TableSpec,
    columns: list[SourceColumn],
) -> list[SchemaChange]:
    """Compare the source table with what raw holds and return the changes to apply.

    New columns are fine (they appear in raw). A safe widening (a wider integer, a decimal with
    more digits or scale, a decimal that now lands as text) is returned, to be applied to raw
    before extracting; a change in the source's declared type that raw's type already holds
    (``varchar(10)`` -> ``varchar(20)``, nullability) is returned as a record. A dropped column,
    a narrowing or any other type change, or a missing key or cursor raises SourceSchemaError
    naming table, column, both types and the fix."""
    where = _where(spec.name, table.name)
    names = {c.name for c in columns}
    for needed, role in [*((k, "primary_key") for k in table.key_columns), (table.cursor, "cursor")]:
        if needed and needed not in names:
            raise SourceSchemaError(f"{where}: the declared {role} column {needed!r} is not in the source table")
    stored = _stored_columns(pipeline, table.name)
    dropped = sorted(set(stored) - names - set(table.exclude_columns))
    if dropped:
        raise SourceSchemaError(
            f"{where}: column(s) {dropped} were dropped from the source table but raw has them. "
            "If that is intended, add them to exclude_columns in sources.yml; raw keeps their history."
        )
    if not stored:
        return []
    now = raw_schema(columns)
    changes = []
    for column in columns:
        old = stored.get(column.name)
        if old is None:
            continue
        before, after = _dlt_type(old), _dlt_type(now[column.name])
        was = old.get(SOURCE_TYPE_HINT)
        if before == after:
            if was and was != _source_hint(column):
                changes.append(SchemaChange(column, f"{was} -> {_source_hint(column)}", widen=False))
            continue
        if not widens(before, after):
            raise SourceSchemaError(
                f"{where}: column {column.name!r} changed type in the source from {was or _spell(before)} to "
                f"{_source_hint(column)}; raw holds {_spell(before)} and the new type needs {_spell(after)}, which "
                "is not a safe widening (values could be cut, rounded or re-interpreted). Nothing was loaded. "
                "Fix: change the column back at the source, or keep raw's type by declaring "
                f"columns: {{{column.name}: text}} (or a decimal(p,s) that holds both) for the table in "
                "sources.yml, or rebuild the table (drop it from raw and load it again)."
            )
        changes.append(SchemaChange(column, f"{_spell(before)} -> {_spell(after)}", widen=True))
    return changes


SOURCE_TYPE_HINT = "x-source-type"
"""The custom hint in dlt's schema that records each raw column's source type (and nullability),
so a change the raw type absorbs (``varchar(10)`` -> ``varchar(20)``) is still seen and recorded."""


@dataclass(frozen=True)
class SchemaChange:
    """A change of one column's source type found by :func:`check_schema`."""

    column: SourceColumn
    what: str
    widen: bool
    """True: raw's column type is widened to ``column.raw_type``; False: only recorded."""

    def describe(self, table: str) -> str:
        verb = "widened" if self.widen else "source type changed"
        return f"{table}.{self.column.name}: {verb} {self.what}"


def _source_hint(column: SourceColumn) -> str:
    return column.source_type + ("" if column.nullable else " not null")


def raw_arrow_schema(columns: list[SourceColumn]) -> pa.Schema:
    """The Arrow types of raw's columns, as DuckDB writes them into the parquet files."""
    con = duckdb.connect()
    try:
        nulls = ", ".join(f'CAST(NULL AS {c.raw_type}) AS "{c.name}"' for c in columns)
        return con.execute(f"SELECT {nulls} LIMIT 0").to_arrow_table().schema
    finally:
        con.close()


def as_raw_types(rows: pa.Table, columns: list[SourceColumn]) -> pa.Table:
    """``rows`` read back from raw with each column in raw's own Arrow type. A warehouse whose
    client gives Python values (PostgreSQL) lets dlt infer a type from the values, e.g. a
    decimal(5,2) for a decimal(10,2) column, and a table dlt creates from that type (its merge
    staging table) would refuse the next wider value. JSON columns keep what the client gave."""
    typed = [c for c in columns if c.name in rows.column_names and c.raw_type != "JSON"]
    for field in raw_arrow_schema(typed) if typed else []:
        if rows.schema.field(field.name).type != field.type:
            index = rows.schema.get_field_index(field.name)
            rows = rows.set_column(index, field, rows.column(index).cast(field.type))
    return rows


def raw_schema(columns: list[SourceColumn]) -> dict[str, Any]:
    """dlt's columns for the raw types, as dlt infers them from the parquet files DuckDB writes."""
    found = py_arrow_to_table_schema_columns(raw_arrow_schema(columns))
    for c in columns:
        if c.raw_type == "JSON":
            found[c.name]["data_type"] = "json"
    return found


def _dlt_type(column: dict[str, Any]) -> tuple[Any, ...]:
    data_type = column.get("data_type")
    precision = column.get("precision")
    if data_type == "bigint" and precision is None:
        precision = 64
    if data_type == "timestamp":
        return (data_type, None, None, column.get("timezone", True))
    if data_type not in ("bigint", "decimal"):  # raw's other types have no width that changes
        return (data_type, None, None, None)
    return (data_type, precision, column.get("scale"), None)


def _spell(t: tuple[Any, ...]) -> str:
    data_type, precision, scale, _ = t
    if data_type == "bigint":
        return {8: "tinyint", 16: "smallint", 32: "integer"}.get(precision, "bigint")
    if data_type == "decimal":
        return f"decimal({precision},{scale or 0})"
    return str(data_type)


def widens(before: tuple[Any, ...], after: tuple[Any, ...]) -> bool:
    """True when every value of raw's type ``before`` is held exactly by ``after``."""
    (old, p0, s0, _), (new, p1, s1, _) = before, after
    if old == new == "bigint":
        return bool(p1 >= p0)
    if old == "bigint" and new == "decimal":  # an integer that became unsigned, or a decimal key
        return bool(p1 - (s1 or 0) >= {8: 3, 16: 5, 32: 10}.get(p0, 19))
    if old == new == "decimal":
        return (s1 or 0) >= (s0 or 0) and p1 - (s1 or 0) >= p0 - (s0 or 0)
    return old == "decimal" and new == "text"  # a numeric past 38 digits lands as its exact text


def apply_changes(pipeline: dlt.Pipeline, table: str, changes: list[SchemaChange]) -> None:
    """Widen raw's columns (and dlt's staging copy of the table) and record every change's new
    source type in dlt's schema, before anything of this run is extracted."""
    if not changes:
        return
    widen = [c.column for c in changes if c.widen]
    if widen:
        with raw_client(pipeline) as client:
            targets = [client.make_qualified_table_name(table)]
            with client.with_staging_dataset():
                staging = client.make_qualified_table_name(table)
                staged = client.has_dataset() and _table_exists(client, table)
            if staged:
                targets.append(staging)
            for target in targets:
                for column in widen:
                    client.execute_sql(
                        f'ALTER TABLE {target} ALTER COLUMN "{column.name}" SET DATA TYPE {column.raw_type}'
                    )
    schema = _schema(pipeline)
    stored: dict[str, dict[str, Any]] = schema.tables[table]["columns"]  # type: ignore[assignment]
    now = raw_schema([c.column for c in changes])
    for change in changes:
        hints = stored[change.column.name]
        if change.widen:
            for key in ("data_type", "precision", "scale"):
                hints.pop(key, None)
                if now[change.column.name].get(key) is not None:
                    hints[key] = now[change.column.name][key]
        hints[SOURCE_TYPE_HINT] = _source_hint(change.column)
    schema._bump_version()
    pipeline.schemas.save_schema(schema)


def _table_exists(client: Any, table: str) -> bool:
    schema_name = client.fully_qualified_dataset_name(quote=False)
    rows = client.execute_sql(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s", schema_name, table
    )
    return bool(rows)


_SESSION = threading.local()
"""The dlt SQL client of raw that :func:`raw_session` holds open in this thread, and its pipeline."""


@contextmanager
def raw_session(pipeline: dlt.Pipeline) -> Iterator[None]:
    """Run this thread's :func:`_raw_arrow` queries of ``pipeline``'s raw (and :func:`_qualified`'s
    names) on one dlt SQL client:
    planning asks raw about three times a table, and each client costs ~30 ms to make (measured;
    ~0.5 s of a quiet demo night, most of it holding the GIL while the other sources load). Not
    on a lake, whose client is an in-memory DuckDB with a view per Iceberg table made when first
    read: a table widened later in the session would be read through its old view."""
    if pipeline.destination.destination_name == "filesystem" or getattr(_SESSION, "client", None) is not None:
        yield
        return
    with raw_client(pipeline) as client:
        _SESSION.client, _SESSION.pipeline = client, pipeline
        try:
            yield
        finally:
            _SESSION.client = _SESSION.pipeline = None


def _session_client(pipeline: dlt.Pipeline) -> Any | None:
    """The client :func:`raw_session` holds open for ``pipeline`` in this thread, if any."""
    return _SESSION.client if getattr(_SESSION, "pipeline", None) is pipeline else None


def _raw_arrow(pipeline: dlt.Pipeline, sql: str) -> pa.Table | None:
    """Run ``sql`` on the warehouse; None when the raw table does not exist yet."""
    session = _session_client(pipeline)
    try:
        with (
            nullcontext(session) if session is not None else raw_client(pipeline) as client,
            client.execute_query(sql) as cur,
        ):
            table = cur.arrow()
    except DestinationUndefinedEntity:
        return None
    if table is None:
        raise RuntimeError("the warehouse returned no result set")
    return table


_QUALIFIED: dict[tuple[str, str, str], str] = {}


def _qualified(pipeline: dlt.Pipeline, table: str) -> str:
    """Raw's quoted ``dataset.table`` name. Kept per destination, dataset and table: planning asks
    it several times a table, and each dlt SQL client costs ~30 ms to make (measured), which a
    quiet night's planning spent mostly on names."""
    key = (pipeline.destination.destination_name, pipeline.dataset_name, table)
    if key not in _QUALIFIED:
        client = _session_client(pipeline) or raw_client(pipeline)
        _QUALIFIED[key] = str(client.make_qualified_table_name(table))
    return _QUALIFIED[key]


def apply_key_change(pipeline: dlt.Pipeline, spec: SourceSpec, table: TableSpec) -> list[str]:
    """A declared primary key other than the one raw was merged on: accepted when raw's rows are
    unique on the new key (always so when it only adds columns), and dlt's schema then holds
    exactly the new key (dlt would otherwise merge on the union of both); refused, naming the
    keys and the fix, when some new key has several rows in raw (a merge would keep one)."""
    stored = _stored_columns(pipeline, table.name)
    old = [n for n, c in stored.items() if c.get("primary_key")]
    new = table.key_columns
    if not old or sorted(old) == sorted(new):
        return []
    if not set(old) <= set(new):
        keys = ", ".join(dquote(k) for k in new)
        found = _raw_arrow(
            pipeline,
            f"select count(*) from (select {keys} from {_qualified(pipeline, table.name)} "
            f"group by {keys} having count(*) > 1)",
        )
        repeated = int(found.column(0)[0].as_py()) if found is not None else 0
        if repeated:
            raise SourceSchemaError(
                f"{_where(spec.name, table.name)}: the declared primary key changed from ({', '.join(old)}) to "
                f"({', '.join(new)}), and raw holds {repeated} value(s) of the new key on several rows (a merge "
                "would keep one of them). Nothing was loaded. Fix: declare the key back, or reload the table "
                "(drop it from raw and its state from dlt's pipeline folder) so it is loaded under the new key."
            )
    schema = _schema(pipeline)
    hints: dict[str, dict[str, Any]] = schema.tables[table.name]["columns"]  # type: ignore[assignment]
    for name in old:
        hints[name].pop("primary_key", None)
    for name in new:
        if name in hints:
            hints[name]["primary_key"] = True
    schema._bump_version()
    pipeline.schemas.save_schema(schema)
    return [f"{table.name}: primary key changed ({', '.join(old)}) -> ({', '.join(new)})"]
