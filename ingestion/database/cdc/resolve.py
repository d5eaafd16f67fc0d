"""Resolving a run's changes per table in DuckDB: one row per key (the last change wins), deletes
and TRUNCATE marked, values the stream does not carry filled from the batch or from raw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ingestion.database import scan
from ingestion.database.cdc.slot import TableChanges
from ingestion.database.columns import (
    DELETED_AT,
    DELETED_FLAG,
    LOAD_ID,
    RESTORED_AT,
    SOURCE_COMMITTED_AT,
    SOURCE_LSN,
    is_bookkeeping,
)
from ingestion.database.scan import SourceColumn, dquote, key_in, select_list, sql_literal
from ingestion.limits import KEY_CHUNK, MEMORY_LIMIT


def _cast(column: str, duck_type: str) -> str:
    """Text from pgoutput to the column's DuckDB type (as the scanner reads it)."""
    col = f'"{column}"'
    if duck_type == "BLOB":
        return f"from_hex(substr({col}, 3))"  # bytea's text form: \x0a1b...
    if duck_type == "JSON":
        return f"CAST({col} AS VARCHAR)"
    if duck_type.endswith("[]"):
        return f"CAST(translate({col}, '{{}}', '[]') AS {duck_type})"  # {1,2} -> [1,2]
    return f"CAST({col} AS {duck_type})"


@dataclass
class Resolved:
    """One table's changes as raw rows: parquet files ready for dlt, and their schema."""

    files: list[tuple[Path, int]]
    schema: pa.Schema
    deleted: int


RawRows = Callable[[str, str], "pa.Table | None"]
"""``raw_rows(columns, predicate)``: raw's rows of the table, None before its first load."""


def resolve(
    changes: TableChanges,
    columns: list[SourceColumn],
    source_types: dict[str, str],
    raw_rows: RawRows,
    load_id: str,
    out: Path,
) -> Resolved:
    """Write one row per changed key, its state after the batch as raw stores it, to parquet
    files under ``out``.

    Values the stream does not carry (a delete's non-key columns, unchanged TOASTed values) come
    from the key's last change in the batch that carried them, else from raw. Text values are
    cast to the scanner's type and then read through the snapshot's SELECT list, so both paths
    give raw the same types."""
    table = changes.spec
    keys = table.key_columns
    pk = ", ".join(dquote(k) for k in keys)
    names = changes.columns
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"threads": 2, "memory_limit": MEMORY_LIMIT})
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET preserve_insertion_order = false")
        meta = "_seq, _op, _lsn, _ts, _unknown"
        as_read = ", ".join(f'{_cast(c, source_types[c])} AS "{c}"' for c in names)
        typed = f"SELECT {meta}, {select_list(columns)} FROM (SELECT {meta}, {as_read} FROM <changes>)"
        empty = ", ".join(f'NULL::VARCHAR AS "{c}"' for c in names)  # the parts hold text
        nothing = f"(SELECT 0::BIGINT AS _seq, '' AS _op, 0::BIGINT AS _lsn, now() AS _ts, [] AS _unknown, {empty})"
        described = con.execute("DESCRIBE " + typed.replace("<changes>", nothing)).fetchall()
        types = {str(r[0]): str(r[1]) for r in described}
        parts = ", ".join(sql_literal(str(p)) for p in changes.parts)
        sources = [typed.replace("<changes>", f"read_parquet([{parts}])")] if parts else []
        if sources and changes.moved_unknown:
            con.execute(f"CREATE TEMP TABLE _changes AS {sources[0]}")
            _fill_moves(con, keys, types, raw_rows, out / "moved")
            sources = ["SELECT * FROM _changes"]
        if changes.truncates:
            sources.append(_truncate_deletes(con, changes, types, raw_rows, sources))
        if not sources:
            return Resolved([], pa.schema([]), 0)
        filled = ", ".join(
            dquote(c)
            if c in keys
            else f'last_value(CASE WHEN NOT list_contains(_unknown, {sql_literal(c)}) THEN struct_pack(v := "{c}") END '
            f'IGNORE NULLS) OVER w AS "{c}"'
            for c in names
        )
        con.execute(
            f"CREATE TEMP TABLE _last AS SELECT * FROM ("
            f"  SELECT _seq, _op, _lsn, _ts, {filled} FROM ({' UNION ALL '.join(sources)}) "
            f"  WINDOW w AS (PARTITION BY {pk} ORDER BY _seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
            f") QUALIFY row_number() OVER (PARTITION BY {pk} ORDER BY _seq DESC) = 1"
        )
        others = [c for c in names if c not in keys]
        missing = " OR ".join(f'"{c}" IS NULL' for c in others) or "false"
        files = _raw_for_keys(con, f"SELECT {pk} FROM _last WHERE {missing}", raw_rows, keys, out)
        raw_files = f"[{', '.join(files)}]"
        described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({raw_files})").fetchall() if files else []
        raw_columns = {str(r[0]) for r in described}
        match = " AND ".join(f"r.{dquote(k)} = l.{dquote(k)}" for k in keys)
        join = f"LEFT JOIN read_parquet({raw_files}) r ON {match}" if files else ""

        def value(c: str) -> str:
            if c in keys:
                return f"l.{dquote(c)}"
            fallback = f'CAST(r."{c}" AS {types[c]})' if c in raw_columns else f"CAST(NULL AS {types[c]})"
            return f'CASE WHEN l."{c}" IS NULL THEN {fallback} ELSE l."{c}".v END AS "{c}"'

        query = (
            f"SELECT {', '.join(value(c) for c in names)}, {sql_literal(load_id)} AS {LOAD_ID}, "
            f"l._op = 'D' AS {DELETED_FLAG}, CASE WHEN l._op = 'D' THEN l._ts END AS {DELETED_AT}, "
            f"{_restored_at(con, raw_rows, keys)} AS {RESTORED_AT}, "
            f"l._lsn AS {SOURCE_LSN}, l._ts AS {SOURCE_COMMITTED_AT} FROM _last l {join}"
        )
        schema = con.execute(f"SELECT * FROM ({query}) LIMIT 0").to_arrow_table().schema
        rows = out / "rows"
        con.execute(
            f"COPY ({query}) TO {sql_literal(str(rows))} (FORMAT parquet, FILE_SIZE_BYTES '{scan.FILE_SIZE}', "
            "COMPRESSION lz4, OVERWRITE_OR_IGNORE)"
        )
        glob = sql_literal(str(rows / "*.parquet"))
        counts = (
            con.execute(
                f"SELECT filename, count(*), count(*) FILTER (WHERE {DELETED_FLAG}) "
                f"FROM read_parquet({glob}, filename = true) GROUP BY filename ORDER BY filename"
            ).fetchall()
            if any(rows.glob("*.parquet"))
            else []
        )
        return Resolved([(Path(f), int(n)) for f, n, _ in counts if n], schema, sum(int(d) for *_, d in counts))
    finally:
        con.close()


def _fill_moves(
    con: duckdb.DuckDBPyConnection, keys: list[str], types: dict[str, str], raw_rows: RawRows, out: Path
) -> None:
    """Give each moved row (``M``: an update that changed the key; its old key's delete is the
    change just before it) the values the stream left out (unchanged TOASTed values): the old
    key's, from its last change in the batch that carried them, else from raw. In sequence order,
    so a value follows a chain of moves."""
    pk = ", ".join(dquote(k) for k in keys)
    moves = con.execute(
        "SELECT _seq, _unknown FROM _changes WHERE _op = 'M' AND len(_unknown) > 0 ORDER BY _seq"
    ).fetchall()
    old_keys = f"SELECT {pk} FROM _changes WHERE _seq IN ({', '.join(str(m[0] - 1) for m in moves)})"
    out.mkdir(parents=True, exist_ok=True)
    files = _raw_for_keys(con, old_keys, raw_rows, keys, out)
    raw_moved = f"read_parquet([{', '.join(files)}])" if files else f"(SELECT {pk} FROM _changes WHERE false)"
    raw_columns = {str(r[0]) for r in con.execute(f"DESCRIBE SELECT * FROM {raw_moved}").fetchall()}
    for seq, unknown in moves:
        old = f"(SELECT {pk} FROM _changes WHERE _seq = {seq - 1})"
        for c in unknown:
            col, name = dquote(c), sql_literal(c)
            in_raw = (
                f"(SELECT struct_pack(v := CAST(r.{col} AS {types[c]})) FROM {raw_moved} r JOIN {old} o USING ({pk}))"
                if c in raw_columns
                else "NULL"
            )
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _moved AS SELECT coalesce("
                f"(SELECT arg_max(struct_pack(v := b.{col}), b._seq) FROM _changes b JOIN {old} o USING ({pk}) "
                f"WHERE b._seq < {seq} AND NOT list_contains(b._unknown, {name})), {in_raw}) AS found"
            )
            con.execute(
                f"UPDATE _changes SET {col} = (SELECT found.v FROM _moved), "
                f"_unknown = list_filter(_unknown, x -> x <> {name}) "
                f"WHERE _seq = {seq} AND (SELECT found FROM _moved) IS NOT NULL"
            )


def _restored_at(con: duckdb.DuckDBPyConnection, raw_rows: RawRows, keys: list[str]) -> str:
    """The SELECT expression of ``_restored_at`` over ``_last l``: the commit time of a key that
    raw holds as deleted and the batch brings back (a restore, or the key reused), else NULL."""
    deleted = raw_rows(", ".join(dquote(k) for k in keys), f'"{DELETED_FLAG}" IS TRUE')
    if deleted is None or not deleted.num_rows:
        return "CAST(NULL AS TIMESTAMPTZ)"
    con.register("_raw_deleted", deleted)
    match = " AND ".join(f"d.{dquote(k)} = l.{dquote(k)}" for k in keys)
    return f"CASE WHEN l._op <> 'D' AND EXISTS (SELECT 1 FROM _raw_deleted d WHERE {match}) THEN l._ts END"


def _truncate_deletes(
    con: duckdb.DuckDBPyConnection,
    changes: TableChanges,
    types: dict[str, str],
    raw_rows: RawRows,
    sources: list[str],
) -> str:
    """A SELECT of one delete per key a TRUNCATE removed: every key raw holds live and every key
    changed earlier in the batch."""
    keys = changes.spec.key_columns
    con.register(
        "_truncates",
        pa.table(
            {
                "_seq": [t[0] for t in changes.truncates],
                "_lsn": [t[1] for t in changes.truncates],
                "_ts": [t[2] for t in changes.truncates],
            }
        ),
    )
    live = raw_rows(", ".join(dquote(k) for k in keys), f'"{DELETED_FLAG}" IS NOT TRUE')
    typed = ", ".join(f"CAST({dquote(k)} AS {types[k]}) AS {dquote(k)}" for k in keys)
    found = [f"SELECT {', '.join(f'CAST(NULL AS {types[k]}) AS {dquote(k)}' for k in keys)}, -1 AS _seq WHERE false"]
    if live is not None:
        con.register("_raw_live", live)
        found.append(f"SELECT {typed}, -1 FROM _raw_live")
    if sources:
        found.append(f"SELECT {', '.join(dquote(k) for k in keys)}, _seq FROM ({sources[0]})")
    others = [c for c in changes.columns if c not in keys]
    unknown = "[" + ", ".join(sql_literal(c) for c in others) + "]::VARCHAR[]"
    values = ", ".join(f"k.{dquote(c)}" if c in keys else f'CAST(NULL AS {types[c]}) AS "{c}"' for c in changes.columns)
    return (
        f"SELECT t._seq, 'D' AS _op, t._lsn, t._ts, {unknown} AS _unknown, {values} "
        f"FROM _truncates t JOIN ({' UNION ALL '.join(found)}) k ON k._seq < t._seq"
    )


def _raw_for_keys(
    con: duckdb.DuckDBPyConnection, keys_sql: str, raw_rows: RawRows, keys: list[str], out: Path
) -> list[str]:
    """Raw's rows for the keys ``keys_sql`` selects, fetched in chunks into parquet files under
    ``out`` (memory bounded by the chunk); returns the files as SQL literals."""
    files: list[str] = []
    result = con.execute(keys_sql)
    while chunk := result.fetchmany(KEY_CHUNK):
        part = raw_rows("*", key_in(keys, [tuple(r) for r in chunk], dquote, sql_literal))
        if part is None:
            return []
        path = out / f"raw-{len(files):05d}.parquet"
        pq.write_table(part.drop_columns([c for c in part.column_names if is_bookkeeping(c)]), path)
        files.append(sql_literal(str(path)))
    return files
