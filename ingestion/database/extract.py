"""Extract a database source: the scanner's parquet files, the change feed, dlt's resources."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import sqlalchemy as sa
from dlt.extract.source import DltSource

from ingestion.database import cdc, scan
from ingestion.database.columns import (
    DELETED_AT,
    DELETED_FLAG,
    LOAD_ID,
    RESTORED_AT,
    SOURCE_COMMITTED_AT,
    SOURCE_LSN,
)
from ingestion.database.plan import (
    _DELETED_AT_TYPE,
    BOUNDARY,
    SharedSnapshot,
    SourceDataError,
    TablePlan,
    _incremental,
    _null_cursor,
    _range_predicate,
    _refuse_bad_keys,
    _restored_at,
    needs_value_check,
    refuse_inexact_values,
)
from ingestion.database.scan import (
    attach,
    dquote,
    engine_kind,
    needs_source_sql,
    read_from,
    select_list,
    source_timeouts,
    sql_literal,
)
from ingestion.database.schema import SOURCE_TYPE_HINT, _source_hint, _where
from ingestion.declaration import SourceSpec


def _extract_files(
    url: sa.URL, spec: SourceSpec, plan: TablePlan, start: Any, staging: Path, load_id: str
) -> tuple[list[tuple[Path, int]], pa.Schema, Any]:
    """COPY the rows to read into parquet files; return (file, rows) pairs, the schema and the
    highest cursor value read. Raises SourceDataError on NULL or duplicate keys among them, and
    on values their raw type cannot hold."""
    # the source answers the check for values raw cannot hold while the rows are copied, in a
    # thread: both read the same rows (at 1 % churn of TPC-H SF1, pages all over the table: the
    # check took 1.4 s of a 4.7 s night, before the copy), and nothing is handed on before it passed
    with ThreadPoolExecutor(max_workers=1) as pool:
        checks: list[Future[None]] = []

        def check(snapshot: SharedSnapshot | None) -> None:
            checks.append(pool.submit(refuse_inexact_values, url, spec, plan, start, snapshot))

        try:
            files = _copy_files(url, spec, plan, start, staging, load_id, check)
        except Exception:
            for started in checks:
                started.result()  # its error names the rows and values: it comes first
            raise
        for started in checks:
            started.result()
    return files


def _copy_files(
    url: sa.URL,
    spec: SourceSpec,
    plan: TablePlan,
    start: Any,
    staging: Path,
    load_id: str,
    check: Callable[[SharedSnapshot | None], None],
) -> tuple[list[tuple[Path, int]], pa.Schema, Any]:
    """:func:`_extract_files`'s copy. ``check`` starts the check for values raw cannot hold, on
    PostgreSQL in the copy's own snapshot: the two read the same rows as of one moment, so a row
    changed between the two reads cannot reach raw unchecked (the scanner copies a NaN decimal
    as 0, without a word). Elsewhere (or where the server cannot export a snapshot) the check
    reads its own."""
    table = plan.spec
    where = _where(spec.name, table.name)
    kind = engine_kind(url)
    # Late keys are an OR beside the cursor's range, which DuckDB cannot hand to the scanner:
    # it would read the whole table and filter it here. The source's own planner combines its
    # indexes (the cursor's and the key's) for the one query.
    at_source = needs_source_sql(kind, plan.columns) or (bool(plan.late_keys) and kind != "sqlite")
    predicate = _range_predicate(plan, start, kind if at_source else None)
    staging.mkdir(parents=True, exist_ok=True)
    with attach(url, timeouts=source_timeouts(spec)) as con, ExitStack() as stack:
        shared = _export_snapshot(con) if kind == "postgresql" and needs_value_check(plan) else None
        if shared is not None:
            stack.callback(shared.taken.wait)  # the exporting transaction must outlive the check's start
        check(shared)
        if plan.boundary_keys is not None and not at_source:
            con.register(BOUNDARY, plan.boundary_keys)
        if predicate and kind == "postgresql":
            # a filtered read: one indexed query beats DuckDB's parallel page-range scans
            con.execute("SET pg_use_ctid_scan = false")
        relation = read_from(kind, table.name, plan.schema, plan.columns, predicate, at_source)
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
                f"(FORMAT parquet, FILE_SIZE_BYTES '{scan.FILE_SIZE}', ROW_GROUP_SIZE {scan.ROW_GROUP_SIZE}, "
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


def _export_snapshot(con: duckdb.DuckDBPyConnection) -> SharedSnapshot | None:
    """Begin the read's transaction at the source and export its snapshot; None (and no
    transaction) where the server refuses."""
    con.execute("BEGIN")  # the scanner's queries from here run in one transaction at the source
    try:
        row = con.execute("SELECT * FROM postgres_query('src', 'SELECT pg_export_snapshot()')").fetchone()
    except duckdb.Error:
        con.execute("ROLLBACK")
        return None
    return SharedSnapshot(str(row[0])) if row else None


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
