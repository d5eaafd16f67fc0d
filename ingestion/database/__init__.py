"""Database sources (SQLite, PostgreSQL, MySQL/MariaDB) declared in sources.yml.

One code path for the three engines:

1. **Plan** (:func:`plan_source`): SQLAlchemy reflects every declared table. A table that vanished,
   a column that was dropped or changed type, a missing key or cursor column stops the source with
   a message naming it, before anything is extracted. For ``deletes: key_diff`` tables a cheap
   pass reads only the primary key and cursor of the source and of raw; it finds
   - keys that vanished from the source (hard deletes: merged back into raw with their last
     values, ``_is_deleted = true`` and ``_deleted_at`` = detection time),
   - keys whose source cursor differs from raw's but lies below the watermark (rows committed
     late with an older ``updated_at``: re-read by key, whatever their age),
   - keys back in the source that raw holds as deleted (a restore, or a key reused by a new row:
     re-read, with ``_restored_at`` = detection time, so the snapshot versions the return even
     when the row's ``updated_at`` is older than its deletion),
   - NULL or duplicate keys (the source fails: a merge would silently keep one of them).
2. **Extract** (:func:`database_source`): DuckDB's scanner reads ``cursor >= start`` (plus the late
   keys) into parquet files that dlt imports as they are, declared with
   ``dlt.sources.incremental`` whose range was pushed down to SQL (``Incremental.advance``). dlt
   commits the cursor in the warehouse with the data, so a failed run never moves it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import sqlalchemy as sa
from dlt.common.destination.exceptions import DestinationUndefinedEntity
from dlt.common.libs.pyarrow import py_arrow_to_table_schema_columns
from dlt.extract.source import DltSource

from ingestion.config import SourceSpec, TableSpec
from ingestion.database import cdc, reader
from ingestion.database.raw import (
    DELETED_AT,
    DELETED_FLAG,
    LOAD_ID,
    RESTORED_AT,
    SOURCE_COMMITTED_AT,
    SOURCE_LSN,
    is_bookkeeping,
)
from ingestion.database.reader import (
    Key,
    SourceColumn,
    SourceSchemaError,
    attach,
    default_schema,
    dquote,
    engine_kind,
    key_in,
    needs_source_sql,
    qualified,
    quote,
    read_from,
    reflect_columns,
    select_list,
    source_literal,
    source_relation,
    sql_literal,
)
from ingestion.database.types import as_text

_DELETED_AT_TYPE = pa.timestamp("us", tz="UTC")
_KEY_CHUNK = 1000


class DeleteGuardError(RuntimeError):
    """Key-diff would mark more rows deleted than the table allows (an emptied or broken source)."""


class SourceDataError(RuntimeError):
    """The source's rows break what the declaration promises (NULL or duplicate primary key)."""


@dataclass
class TablePlan:
    """What one run extracts from one table, decided before extraction starts."""

    spec: TableSpec
    columns: list[SourceColumn]
    first_load: bool
    deleted: pa.Table | None = None
    late_keys: list[Key] = field(default_factory=list)
    restored: pa.Table | None = None
    """Keys (columns ``k0``..) raw holds as deleted that are back in the source: their rows get
    ``_restored_at`` = ``detected_at``."""
    restored_kept: pa.Table | None = None
    """Raw's live rows that came back after a deletion (columns ``k0``.., ``c`` = cursor, ``at`` =
    ``_restored_at``): a re-read of such a row with its cursor unchanged keeps its ``_restored_at``."""
    detected_at: datetime | None = None
    """The time this run stamps on what key-diff finds (``_deleted_at``, ``_restored_at``)."""
    add_restored_at: bool = False
    """Raw's table was loaded before ``_restored_at`` existed: this run adds the column."""
    start: Any = None
    """The cursor value this run reads from (dlt's last value, minus the lag)."""
    boundary_keys: list[Key] = field(default_factory=list)
    """Keys raw already holds at exactly ``start``: not read again (ties are still never lost)."""
    cdc_upto: int | None = None
    """For ``deletes: cdc``: the WAL position this run reads changes up to."""
    types: dict[str, str] = field(default_factory=dict)
    """For ``deletes: cdc``: each column's DuckDB type as the scanner reads it, before the SELECT
    list's casts (the log's text values are cast to it, then read through the same SELECT list)."""
    raw_rows: cdc.RawRows | None = None
    """For ``deletes: cdc``: raw's rows, given columns and a SQL predicate (None before the first load)."""
    cdc_deleted: int = 0
    """Rows the change stream deleted in this run (known once extracted)."""
    end: Any = None
    """A backfill's upper bound (exclusive): the run reads ``start <= cursor < end`` and leaves the
    incremental cursor where it was."""
    schema: str | None = None
    """The schema (PostgreSQL) or database (MySQL) the table is read from; None for SQLite."""
    changes: list[str] = field(default_factory=list)
    """Schema changes found this run: widenings applied to raw, source types recorded."""

    @property
    def notes(self) -> list[str]:
        """How columns that do not land as the obvious type land (e.g. a numeric as text)."""
        return [f"{self.spec.name}.{c.name} ({c.source_type}): {c.note}" for c in self.columns if c.note]

    @property
    def deleted_count(self) -> int:
        return self.cdc_deleted + (0 if self.deleted is None else self.deleted.num_rows)


def _where(source: str, table: str) -> str:
    return f"source {source!r}, table {table!r}"


def _stored_columns(pipeline: dlt.Pipeline, table: str) -> dict[str, Any]:
    """The columns raw holds for ``table`` (from dlt's schema), without dlt's and our bookkeeping."""
    if not pipeline.default_schema_name:
        return {}
    stored = pipeline.default_schema.tables.get(table, {}).get("columns", {})
    return {n: c for n, c in stored.items() if not is_bookkeeping(n)}


def _has_column(pipeline: dlt.Pipeline, table: str, column: str) -> bool:
    """True when dlt's schema has ``column`` in ``table``."""
    if not pipeline.default_schema_name:
        return False
    return column in pipeline.default_schema.tables.get(table, {}).get("columns", {})


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


def raw_schema(columns: list[SourceColumn]) -> dict[str, Any]:
    """dlt's columns for the raw types, as dlt infers them from the parquet files DuckDB writes."""
    con = duckdb.connect()
    try:
        nulls = ", ".join(f'CAST(NULL AS {c.raw_type}) AS "{c.name}"' for c in columns)
        arrow = con.execute(f"SELECT {nulls} LIMIT 0").to_arrow_table()
    finally:
        con.close()
    found = py_arrow_to_table_schema_columns(arrow.schema)
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
        with pipeline.sql_client() as client:
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
    schema = pipeline.default_schema
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


def _raw_arrow(pipeline: dlt.Pipeline, sql: str) -> pa.Table | None:
    """Run ``sql`` on the warehouse; None when the raw table does not exist yet."""
    try:
        with pipeline.sql_client() as client, client.execute_query(sql) as cur:
            table = cur.arrow()
    except DestinationUndefinedEntity:
        return None
    if table is None:
        raise RuntimeError("the warehouse returned no result set")
    return table


def _qualified(pipeline: dlt.Pipeline, table: str) -> str:
    with pipeline.sql_client() as client:
        return str(client.make_qualified_table_name(table))


def key_pass(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    schema: str | None,
    pipeline: dlt.Pipeline,
    spec: SourceSpec,
    table: TableSpec,
    columns: list[SourceColumn],
    start: Any,
    now: datetime,
) -> tuple[pa.Table | None, list[Key], pa.Table | None]:
    """Compare the source's keys (and cursors) with raw's; return raw's rows for vanished keys,
    flagged deleted, the keys of rows committed late below the watermark (or back after a
    deletion), and the keys back after a deletion (columns ``k0``.., None when there are none)."""
    where = _where(spec.name, table.name)
    names = table.key_columns
    by_name = {c.name: c for c in columns}
    cursor = by_name.get(table.cursor) if table.cursor else None
    ks = ", ".join(f"k{i}" for i in range(len(names)))
    match = " AND ".join(f"r.k{i} = s.k{i}" for i in range(len(names)))
    raw_cursor = dquote(table.cursor) if table.cursor else "NULL"
    qualified = _qualified(pipeline, table.name)
    raw_ks = ", ".join(f"{dquote(n)} as k{i}" for i, n in enumerate(names))
    raw = _raw_arrow(pipeline, f'select {raw_ks}, {raw_cursor} as c, "{DELETED_FLAG}" is true as d from {qualified}')
    relation = read_from(kind, table.name, schema, [*(by_name[n] for n in names), *([cursor] if cursor else [])])
    source_ks = ", ".join(f"{by_name[n].expression} AS k{i}" for i, n in enumerate(names))
    cursor_sql = cursor.expression if cursor else "NULL"
    source = con.execute(f"SELECT {source_ks}, {cursor_sql} AS c FROM {relation}").to_arrow_table()
    con.register("source_keys", source)
    _refuse_bad_keys(con, "source_keys", [f"k{i}" for i in range(len(names))], where, table)
    if raw is None or raw.num_rows == 0:
        con.unregister("source_keys")
        return None, [], None
    con.register("raw_keys", raw)
    live = con.execute("SELECT count(*) FROM raw_keys WHERE NOT d").fetchone()[0]  # type: ignore[index]
    gone = [
        tuple(r)
        for r in con.execute(
            f"SELECT {ks} FROM raw_keys r WHERE NOT d AND NOT EXISTS (SELECT 1 FROM source_keys s WHERE {match}) "
            f"ORDER BY {ks}"
        ).fetchall()
    ]
    late: list[Key] = []
    if start is not None and cursor is not None:
        late = [
            tuple(r)
            for r in con.execute(
                f"SELECT {', '.join(f's.k{i}' for i in range(len(names)))} FROM source_keys s "
                f"LEFT JOIN raw_keys r ON {match} WHERE s.c < {sql_literal(start)} "
                f"AND (r.k0 IS NULL OR r.d OR r.c IS DISTINCT FROM s.c) ORDER BY {ks}"
            ).fetchall()
        ]
    restored = con.execute(
        f"SELECT {ks} FROM raw_keys r WHERE d AND EXISTS (SELECT 1 FROM source_keys s WHERE {match})"
    ).to_arrow_table()
    con.unregister("raw_keys")
    con.unregister("source_keys")
    if len(gone) > table.max_delete_share * live:
        raise DeleteGuardError(
            f"{where}: {len(gone)} of {live} live rows are gone from the source ({len(source)} keys left), "
            f"more than max_delete_share={table.max_delete_share}. Is the source table emptied or the connection "
            "pointing elsewhere? Nothing was marked deleted; raise max_delete_share in sources.yml if it is real."
        )
    back = restored if restored.num_rows else None
    if not gone:
        return None, late, back
    parts = []
    for i in range(0, len(gone), _KEY_CHUNK):
        keys = key_in(names, gone[i : i + _KEY_CHUNK], dquote, sql_literal)
        part = _raw_arrow(pipeline, f"select * from {qualified} where {keys}")
        assert part is not None
        parts.append(part.drop_columns([c for c in part.column_names if is_bookkeeping(c)]))
    rows = pa.concat_tables(parts, promote_options="default")
    rows = rows.append_column(DELETED_FLAG, pa.array([True] * rows.num_rows, pa.bool_()))
    rows = rows.append_column(DELETED_AT, pa.array([now] * rows.num_rows, _DELETED_AT_TYPE))
    return rows, late, back


def _refuse_bad_keys(
    con: duckdb.DuckDBPyConnection, relation: str, keys: list[str], where: str, table: TableSpec
) -> None:
    """NULL or duplicate primary keys among ``relation``'s rows (its key columns ``keys``) fail
    the table: a merge would silently keep one row. The message names the key and some values."""
    names = table.key_columns
    ks = ", ".join(keys)
    any_null = " OR ".join(f"{k} IS NULL" for k in keys)
    nulls = con.execute(f"SELECT count(*) FROM {relation} WHERE {any_null}").fetchone()[0]  # type: ignore[index]
    label = names[0] if len(names) == 1 else f"({', '.join(names)})"
    if nulls:
        raise SourceDataError(f"{where}: {nulls} row(s) with a NULL primary key {label!r}")
    duplicated = con.execute(
        f"SELECT {ks}, count(*) - 1 AS extra FROM {relation} GROUP BY {ks} HAVING count(*) > 1 ORDER BY {ks}"
    ).fetchall()
    if duplicated:
        extra = sum(int(r[-1]) for r in duplicated)
        sample = "; ".join(table.key_text(tuple(r[:-1])) for r in duplicated[:5])
        raise SourceDataError(f"{where}: {extra} duplicate value(s) of primary key {label!r}, e.g. {sample}")


def _incremental(table: TableSpec) -> Any:
    if not table.cursor:
        return None
    return dlt.sources.incremental(table.cursor, range_start="closed", lag=table.lag_seconds or None)


def _checked_columns(
    engine: sa.Engine,
    pipeline: dlt.Pipeline,
    spec: SourceSpec,
    table: TableSpec,
) -> tuple[list[SourceColumn], list[str]]:
    """Reflect a declared table, check it against raw and apply the safe changes (widenings): the
    nightly and a backfill share this. Returns the columns and the changes, described."""
    where = _where(spec.name, table.name)
    schema = source_schema(table, engine.url)
    try:
        columns = reflect_columns(engine, table.name, schema, table.exclude_columns, dict(table.columns))
    except sa.exc.NoSuchTableError:
        raise SourceSchemaError(
            f"{where}: the table is not in the source database{f' (schema {schema})' if schema else ''} "
            "(renamed or dropped?). Fix the source or sources.yml; raw is left as it is."
        ) from None
    except SourceSchemaError as exc:
        raise SourceSchemaError(f"{where}: {exc}") from None
    changes = check_schema(pipeline, spec, table, columns)
    apply_changes(pipeline, table.name, changes)
    return columns, [c.describe(table.name) for c in changes] + apply_key_change(pipeline, spec, table)


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
    schema = pipeline.default_schema
    hints: dict[str, dict[str, Any]] = schema.tables[table.name]["columns"]  # type: ignore[assignment]
    for name in old:
        hints[name].pop("primary_key", None)
    for name in new:
        if name in hints:
            hints[name]["primary_key"] = True
    schema._bump_version()
    pipeline.schemas.save_schema(schema)
    return [f"{table.name}: primary key changed ({', '.join(old)}) -> ({', '.join(new)})"]


def source_schema(table: TableSpec, url: sa.URL) -> str | None:
    """The schema the table is read from at the source (None: SQLite's only one)."""
    if engine_kind(url) == "sqlite":
        return None
    return table.schema or default_schema(url)


def plan_source(
    pipeline: dlt.Pipeline,
    url: sa.URL,
    spec: SourceSpec,
    only: set[str] | None = None,
    now: datetime | None = None,
    window: tuple[datetime, datetime] | None = None,
) -> list[TablePlan]:
    """Reflect, check and key-diff every declared table; raise naming the source and table.

    With a backfill ``window`` (start, end), the tables with a cursor are planned to re-read
    ``start <= cursor < end`` without moving their cursor, and without delete detection (the
    nightly's job); tables without one (``deletes: cdc`` included) are left out."""
    now = now or datetime.now(UTC)
    if window is not None:
        return _plan_backfill(pipeline, url, spec, only, window)
    upto = _cdc_bound(url, spec, only)
    engine = sa.create_engine(url)
    plans = []
    try:
        kind = engine_kind(url)
        with attach(url) as con:
            for table in spec.tables:
                if only is not None and table.name not in only:
                    continue
                columns, changes = _checked_columns(engine, pipeline, spec, table)
                first = not _stored_columns(pipeline, table.name)
                plan = TablePlan(table, columns, first_load=first, detected_at=now, schema=source_schema(table, url))
                plan.changes = changes
                plan.add_restored_at = not first and not _has_column(pipeline, table.name, RESTORED_AT)
                if table.deletes == "cdc":
                    # the log carries each value's text as the server writes it: cast it to the
                    # scanner's type, or keep it as text where raw holds the server's text
                    relation = source_relation(kind, table.name, plan.schema)
                    names = ", ".join(f'"{c.name}"' for c in columns)
                    described = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT {names} FROM {relation}").fetchall()}
                    plan.types = {c.name: "VARCHAR" if c.source_expr else str(described[c.name]) for c in columns}
                    plan.cdc_upto = upto
                    plan.raw_rows = _raw_reader(pipeline, table.name)
                elif not first:
                    _refuse_null_cursors(engine, spec, table, plan.schema)
                    plan.start = _resource_start(pipeline, spec, table)
                    if plan.start is not None and not table.lag_seconds:
                        plan.boundary_keys = _boundary_keys(pipeline, table, plan.start)
                if table.deletes == "key_diff" and not first:
                    plan.deleted, plan.late_keys, plan.restored = key_pass(
                        con, kind, plan.schema, pipeline, spec, table, columns, plan.start, now
                    )
                    if not plan.add_restored_at:
                        plan.restored_kept = _restored_rows(pipeline, table)
                plans.append(plan)
    finally:
        engine.dispose()
    return plans


def _plan_backfill(
    pipeline: dlt.Pipeline, url: sa.URL, spec: SourceSpec, only: set[str] | None, window: tuple[datetime, datetime]
) -> list[TablePlan]:
    engine = sa.create_engine(url)
    plans = []
    try:
        for table in spec.tables:
            if (only is not None and table.name not in only) or not table.cursor:
                continue
            columns, changes = _checked_columns(engine, pipeline, spec, table)
            if not _stored_columns(pipeline, table.name):
                raise SourceSchemaError(
                    f"{_where(spec.name, table.name)}: never loaded, so there is nothing to backfill; "
                    "run the nightly first (it loads the whole table)"
                )
            plan = TablePlan(
                table, columns, first_load=False, start=window[0], end=window[1], schema=source_schema(table, url)
            )
            plan.changes = changes
            if table.deletes == "key_diff" and _has_column(pipeline, table.name, RESTORED_AT):
                plan.restored_kept = _restored_rows(pipeline, table)
            plans.append(plan)
    finally:
        engine.dispose()
    return plans


def _cdc_bound(url: sa.URL, spec: SourceSpec, only: set[str] | None) -> int | None:
    """For a source with ``deletes: cdc`` tables: check the slot and publication and return the
    WAL position this run reads up to. Read before reflecting and snapshotting, so a snapshot
    holds every change below it."""
    tables = [t for t in cdc.cdc_tables(spec) if only is None or t.name in only]
    if not tables:
        return None
    if engine_kind(url) != "postgresql":
        raise SourceSchemaError(f"{_where(spec.name, tables[0].name)}: deletes: cdc needs PostgreSQL")
    if len(tables) != len(cdc.cdc_tables(spec)):
        raise ValueError(f"source {spec.name!r}: the CDC tables share one slot; select all of them or none")
    return cdc.check_ready(url, spec, tables)


def _raw_reader(pipeline: dlt.Pipeline, table: str) -> cdc.RawRows:
    def rows(columns: str, predicate: str) -> pa.Table | None:
        return _raw_arrow(pipeline, f"select {columns} from {_qualified(pipeline, table)} where {predicate}")

    return rows


def _refuse_null_cursors(engine: sa.Engine, spec: SourceSpec, table: TableSpec, schema: str | None) -> None:
    """Rows without a cursor would never be read by an incremental run: refuse them. Asked of the
    source database itself, where an index on the cursor answers it."""
    if not table.cursor:
        return
    t = sa.table(table.name, sa.column(table.cursor), schema=schema)
    with engine.connect() as con:
        missing = con.execute(sa.select(sa.func.count()).select_from(t).where(t.c[table.cursor].is_(None))).scalar()
    if missing:
        raise SourceDataError(_null_cursor(_where(spec.name, table.name), int(missing), table))


def _restored_rows(pipeline: dlt.Pipeline, table: TableSpec) -> pa.Table | None:
    """Raw's live rows that carry ``_restored_at`` (key ``k0``.., cursor ``c``, ``at``); None if none."""
    cursor = f'"{table.cursor}"' if table.cursor else "NULL"
    ks = ", ".join(f"{dquote(n)} as k{i}" for i, n in enumerate(table.key_columns))
    rows = _raw_arrow(
        pipeline,
        f'select {ks}, {cursor} as c, "{RESTORED_AT}" as at '
        f'from {_qualified(pipeline, table.name)} where "{RESTORED_AT}" is not null and "{DELETED_FLAG}" is not true',
    )
    return rows if rows is not None and rows.num_rows else None


def _restored_at(plan: TablePlan, con: duckdb.DuckDBPyConnection) -> str:
    """The SELECT expression of ``_restored_at``: the detection time for a key back after a
    deletion, raw's value for a row it keeps unchanged, else NULL."""
    table = plan.spec
    match = " AND ".join(f"r.k{i} = {dquote(n)}" for i, n in enumerate(table.key_columns))
    found = []
    if plan.restored is not None and plan.detected_at is not None:
        con.register("_restored_now", plan.restored)
        found.append(
            f"CASE WHEN EXISTS (SELECT 1 FROM _restored_now r WHERE {match}) THEN {sql_literal(plan.detected_at)} END"
        )
    if plan.restored_kept is not None:
        con.register("_restored_kept", plan.restored_kept)
        cursor = next((c.expression for c in plan.columns if c.name == table.cursor), "NULL")
        found.append(f"(SELECT r.at FROM _restored_kept r WHERE {match} AND r.c IS NOT DISTINCT FROM {cursor})")
    found.append("CAST(NULL AS TIMESTAMPTZ)")
    return f"COALESCE({', '.join(found)})" if len(found) > 1 else found[0]


def _boundary_keys(pipeline: dlt.Pipeline, table: TableSpec, start: Any) -> list[Key]:
    """Live keys raw holds with the cursor exactly at ``start`` (what dlt's closed range would
    de-duplicate): rows tied at the watermark that arrive later are still read."""
    rows = _raw_arrow(
        pipeline,
        f"select {', '.join(dquote(n) for n in table.key_columns)} from {_qualified(pipeline, table.name)} "
        f'where "{table.cursor}" = {sql_literal(start)} and "{DELETED_FLAG}" is not true',
    )
    return [] if rows is None else [tuple(r.values()) for r in rows.to_pylist()]


def _resource_start(pipeline: dlt.Pipeline, spec: SourceSpec, table: TableSpec) -> Any:
    """The cursor value the next extract starts from (dlt's stored last value minus the lag)."""
    if not table.cursor:
        return None
    state = pipeline.state.get("sources", {}).get(spec.name, {}).get("resources", {}).get(table.name, {})
    last = state.get("incremental", {}).get(table.cursor, {}).get("last_value")
    if last is None:
        return None
    if table.lag_seconds and isinstance(last, datetime):
        return last - timedelta(seconds=table.lag_seconds)
    return last


def _range_predicate(plan: TablePlan, start: Any, kind: str | None) -> str:
    """What a run reads: ``cursor >= start`` (below ``end`` for a backfill, without the keys raw
    holds at exactly ``start``), or the late keys. ``kind`` None: in DuckDB's SQL, for the
    scanner to push down; else in the source's own SQL."""
    table = plan.spec

    def q(name: str) -> str:
        return quote(kind, name) if kind else f'"{name}"'

    def lit(value: Any) -> str:
        return source_literal(kind, value) if kind else sql_literal(value)

    cursor = next((c for c in plan.columns if c.name == table.cursor), None)
    names = table.key_columns
    predicate = ""
    if cursor is not None and start is not None:
        # Compare the source column itself, so the filter runs in the source database on its index.
        column, value = q(cursor.name), lit(cursor.filter_value(start))
        predicate = f"{column} >= {value}"
        if plan.end is not None:
            predicate += f" AND {column} < {lit(cursor.filter_value(plan.end))}"
        if plan.boundary_keys and start == plan.start:
            predicate += f" AND NOT ({column} = {value} AND {key_in(names, plan.boundary_keys, q, lit)})"
    for i in range(0, len(plan.late_keys), _KEY_CHUNK):
        keys = key_in(names, plan.late_keys[i : i + _KEY_CHUNK], q, lit)
        predicate = f"({predicate}) OR {keys}" if predicate else keys
    return predicate


_SAMPLE = 5


def refuse_inexact_values(url: sa.URL, spec: SourceSpec, plan: TablePlan, start: Any) -> None:
    """Stop the table when rows to read hold values raw's type cannot hold exactly (NaN in a
    decimal, an infinite or zero date, a SQLite value of another storage class), naming the
    column, the keys, the values and the fix. Asked of the source in its own SQL, over the rows
    this run reads (SQLite, local: the whole table)."""
    special = [c for c in plan.columns if c.special]
    if not special:
        return
    kind = engine_kind(url)
    table = plan.spec
    predicate = "" if kind == "sqlite" else _range_predicate(plan, start, kind)
    any_bad = " OR ".join(f"({c.special})" for c in special)
    where = f"({any_bad})" + (f" AND ({predicate})" if predicate else "")
    flags = ", ".join(f"CASE WHEN {c.special} THEN 1 ELSE 0 END" for c in special)
    texts = ", ".join(_text_of(kind, c.name) for c in special)
    names = table.key_columns
    pk = ", ".join(quote(kind, n) for n in names)
    sql = (
        f"SELECT {pk}, {flags}, {texts} FROM {qualified(kind, table.name, plan.schema)} "
        f"WHERE {where} ORDER BY {pk} LIMIT {_SAMPLE * len(special)}"
    )
    engine = sa.create_engine(url)
    try:
        # the driver's own cursor, without parameters: no driver reads '%' in the SQL as a placeholder
        con = engine.raw_connection()
        try:
            cursor = con.cursor()
            cursor.execute(sql)
            rows = cursor.fetchall()
        finally:
            con.close()
    finally:
        engine.dispose()
    if not rows:
        return
    n, nk = len(special), len(names)
    problems = []
    for i, column in enumerate(special):
        found = [(tuple(r[:nk]), r[nk + n + i]) for r in rows if r[nk + i]][:_SAMPLE]
        if found:
            sample = "; ".join(f"{table.key_text(k)}: {v!r}" for k, v in found)
            problems.append(f"column {column.name!r} ({column.source_type} -> raw {column.raw_type}) at {sample}")
    raise SourceDataError(
        f"{_where(spec.name, table.name)}: values raw cannot hold exactly (they would be replaced by another "
        f"value): {'; '.join(problems)}. Nothing was loaded. Fix the rows at the source, or declare "
        f"columns: {{<column>: text}} for the table in sources.yml to land the source's exact text."
    )


def _text_of(kind: str, name: str) -> str:
    """A value's text for a message (SQLite's with its storage class)."""
    if kind == "sqlite":
        return f"typeof({quote(kind, name)}) || ': ' || {as_text(kind, name)}"
    return as_text(kind, name)


def _extract_files(
    url: sa.URL, spec: SourceSpec, plan: TablePlan, start: Any, staging: Path, load_id: str
) -> tuple[list[tuple[Path, int]], pa.Schema, Any]:
    """COPY the rows to read into parquet files; return (file, rows) pairs, the schema and the
    highest cursor value read. Raises SourceDataError on NULL or duplicate keys among them, and
    on values their raw type cannot hold."""
    table = plan.spec
    where = _where(spec.name, table.name)
    kind = engine_kind(url)
    refuse_inexact_values(url, spec, plan, start)
    at_source = needs_source_sql(kind, plan.columns)
    predicate = _range_predicate(plan, start, kind if at_source else None)
    staging.mkdir(parents=True, exist_ok=True)
    with attach(url) as con:
        if predicate and kind == "postgresql":
            # a filtered read: one indexed query beats DuckDB's parallel page-range scans
            con.execute("SET pg_use_ctid_scan = false")
        relation = read_from(kind, table.name, plan.schema, plan.columns, predicate)
        extra = (
            f", CAST(NULL AS BIGINT) AS {SOURCE_LSN}, CAST(NULL AS TIMESTAMPTZ) AS {SOURCE_COMMITTED_AT}"
            if table.deletes == "cdc"
            else ""
        )
        query = (
            f"SELECT {select_list(plan.columns)}, {sql_literal(load_id)} AS {LOAD_ID}, "
            f"false AS {DELETED_FLAG}, CAST(NULL AS TIMESTAMPTZ) AS {DELETED_AT}, "
            f"{_restored_at(plan, con)} AS {RESTORED_AT}{extra} FROM {relation}"
        )
        try:
            schema = con.execute(f"SELECT * FROM ({query}) LIMIT 0").to_arrow_table().schema
            con.execute(
                f"COPY ({query}) TO {sql_literal(str(staging))} "
                f"(FORMAT parquet, FILE_SIZE_BYTES '{reader.FILE_SIZE}', ROW_GROUP_SIZE {reader.ROW_GROUP_SIZE}, "
                "COMPRESSION lz4, OVERWRITE_OR_IGNORE)"
            )
        except duckdb.DataError as exc:  # conversion, out of range, SQLite's type mismatch
            raise SourceDataError(
                f"{where}: a value could not be read exactly: {' '.join(str(exc).split())[:400]}. Nothing was "
                "loaded. Fix the row at the source, or declare columns: {<column>: text} for the table in "
                "sources.yml to land the source's exact text."
            ) from None
        files = sorted(staging.glob("*.parquet"))
        if not files:
            return [], schema, None
        glob = sql_literal(str(staging / "*.parquet"))
        cursor_max = f'max("{table.cursor}")' if table.cursor else "NULL"
        cursor_nulls = f'count(*) - count("{table.cursor}")' if table.cursor else "0"
        row = con.execute(f"SELECT {cursor_max}, {cursor_nulls} FROM read_parquet({glob})").fetchone()
        top, missing = row if row else (None, 0)
        if missing:
            raise SourceDataError(_null_cursor(where, missing, table))
        _refuse_bad_keys(con, f"read_parquet({glob})", [dquote(k) for k in table.key_columns], where, table)
        counts = con.execute(
            f"SELECT filename, count(*) FROM read_parquet({glob}, filename = true) GROUP BY filename ORDER BY filename"
        ).fetchall()
    return [(Path(f), int(n)) for f, n in counts if n], schema, top


def _null_cursor(where: str, count: int, table: TableSpec) -> str:
    return (
        f"{where}: {count} row(s) with a NULL cursor {table.cursor!r}; an incremental load cannot place them. "
        "Fill the column at the source or declare the table without a cursor (full reload)."
    )


class _ChangeFeed:
    """The slot's changes of one run, read once for all the source's CDC tables; reading them
    puts the new position in dlt's source state, which dlt commits with the rows."""

    def __init__(self, url: sa.URL, spec: SourceSpec, plans: list[TablePlan], staging: Path) -> None:
        self.url, self.spec, self.staging = url, spec, staging
        self.plans = [p for p in plans if p.spec.deletes == "cdc"]
        self._batch: cdc.ChangeBatch | None = None

    def batch(self) -> cdc.ChangeBatch:
        if self._batch is None:
            state = dlt.current.source_state().setdefault("cdc", {})
            upto = self.plans[0].cdc_upto
            assert upto is not None
            # a first load is a snapshot taken after `upto` was read: it holds those changes already
            tables = {p.spec.name: p.columns for p in self.plans if not p.first_load}
            self._batch = cdc.read_changes(self.url, self.spec, tables, state.get("lsn"), upto, self.staging)
            state["lsn"] = self._batch.end_lsn
        return self._batch

    def resource(self, plan: TablePlan) -> Any:
        """The resource that merges one table's changes into raw."""
        table = plan.spec

        def changes() -> Iterator[Any]:
            found = self.batch().tables[table.name]
            if not found.count and not found.truncates:
                if plan.add_restored_at:  # raw's table predates the column: add it (staging reads it)
                    yield pa.table({RESTORED_AT: pa.array([], _DELETED_AT_TYPE)})
                return
            assert plan.raw_rows is not None
            load_id = dlt.current.load_package_state()["load_id"]
            out = self.staging / f"{table.name}.resolved"
            resolved = cdc.resolve(found, plan.columns, plan.types, plan.raw_rows, load_id, out)
            plan.cdc_deleted = resolved.deleted
            for path, rows in resolved.files:
                yield dlt.mark.with_file_import(str(path), "parquet", rows, hints=resolved.schema.empty_table())

        return dlt.resource(
            changes,
            name=table.name,
            write_disposition="merge",
            primary_key=table.key_columns,
            columns=column_hints(plan),
        )


def _table_resource(url: sa.URL, spec: SourceSpec, plan: TablePlan, staging: Path, feed: _ChangeFeed | None) -> Any:
    table = plan.spec
    # a backfill declares no incremental: dlt then neither reads nor moves the stored cursor
    cursor_range = _incremental(table) if plan.end is None else None

    def read(incremental: Any = cursor_range) -> Iterator[Any]:
        if feed is not None:
            feed.batch()  # moves the stored position past what this snapshot holds
        start = incremental.get_current_range()[0] if incremental is not None else plan.start
        load_id = dlt.current.load_package_state()["load_id"]
        files, schema, top = _extract_files(url, spec, plan, start, staging / table.name, load_id)
        if not files and (plan.first_load or plan.add_restored_at):
            # the table exists in raw even when the source table is empty; a table loaded before
            # _restored_at existed gets the column (staging reads it)
            yield schema.empty_table()
        for path, rows in files:
            # the (empty) arrow table carries the schema; without an item dlt would drop the file
            yield dlt.mark.with_file_import(str(path), "parquet", rows, hints=schema.empty_table())
        if incremental is not None and top is not None:
            last = incremental.last_value
            incremental.advance(top if last is None else max(top, last))

    disposition = "replace" if plan.first_load and table.write_disposition == "merge" else table.write_disposition
    return dlt.resource(
        read,
        name=table.name,
        write_disposition=disposition,
        primary_key=table.key_columns,
        columns=column_hints(plan),
    )


def column_hints(plan: TablePlan) -> dict[str, Any]:
    """dlt's hints for the table's columns: each one's source type (so a later change of it is
    seen), JSON where raw holds JSON, and the key nullable (DuckDB writes every parquet column as
    nullable; saying so lets dlt import the files unchanged)."""
    hints: dict[str, Any] = {}
    for column in plan.columns:
        hint: dict[str, Any] = {SOURCE_TYPE_HINT: _source_hint(column)}
        if column.raw_type == "JSON":
            hint["data_type"] = "json"
        hints[column.name] = hint
    for key in plan.spec.key_columns:
        hints.setdefault(key, {})["nullable"] = True
    return hints


def database_source(spec: SourceSpec, url: sa.URL, plans: list[TablePlan], staging: Path) -> DltSource:
    """The dlt source for one declared database: one resource per planned table, plus one per
    table that carries the rows key-diff found deleted."""

    feed = _ChangeFeed(url, spec, plans, staging / "_cdc") if any(p.cdc_upto is not None for p in plans) else None

    @dlt.source(name=spec.name, max_table_nesting=0)
    def source() -> Iterator[Any]:
        for plan in plans:
            if plan.spec.deletes == "cdc" and feed is not None:
                if plan.first_load:
                    yield _table_resource(url, spec, plan, staging, feed)
                else:
                    yield feed.resource(plan)
            else:
                yield _table_resource(url, spec, plan, staging, None)
        for plan in plans:
            if plan.deleted is not None and plan.deleted.num_rows:
                yield dlt.resource(
                    _with_load_id(plan.deleted),
                    name=f"{plan.spec.name}__deletes",
                    table_name=plan.spec.name,
                    write_disposition="merge",
                    primary_key=plan.spec.key_columns,
                    # raw's rows as arrow carry JSON as text: without the hints they retype raw
                    columns=column_hints(plan),
                )

    return source()


def _with_load_id(rows: pa.Table) -> Iterator[pa.Table]:
    load_id = dlt.current.load_package_state()["load_id"]
    yield rows.append_column(LOAD_ID, pa.array([load_id] * rows.num_rows, pa.string()))


def new_staging_dir(root: Path) -> Path:
    """A fresh folder for one extract's parquet files."""
    return root / f"extract-{uuid.uuid4().hex[:12]}"


def remove_staging_dir(path: Path) -> None:
    """Remove an extract's parquet files once dlt holds them in its load package."""
    shutil.rmtree(path, ignore_errors=True)
