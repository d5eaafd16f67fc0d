"""Columns a files or stream table does not declare: inferred from the data on first load, pinned
in raw's dlt schema, evolved by new columns, and never narrowed.

A table without ``columns:`` in ``sources.yml`` is typed by what its first file (or batch of
messages) holds; from then on the types raw holds are the table's declaration, read back from the
pipeline's dlt schema each run. A column that appears later is inferred from the file or batch
that brings it and added; a value that does not fit a pinned type is quarantined with the reason,
exactly as for a declared column (and a file with too many such rows fails, naming it). A column
that holds no value yet is not pinned: it is inferred when its first value arrives.

Why not DuckDB's CSV sniffer as it is: it samples rows and proposes ``DOUBLE`` for a fraction. A
column is typed here by every value of the file, and a fraction as the exact ``decimal(p,s)``
that holds each value as written (never a float); DuckDB does the matching and casting. Parquet
columns keep the type the file's own schema gives them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dlt.common.normalizers.naming.snake_case import NamingConvention

from ingestion.column_types import finer_than_microseconds
from ingestion.declaration import SourceSpec, TableSpec

INTERNAL = frozenset({"_dlt_load_id", "_dlt_id", "_line", "_file_order", "_stream_seq"})
"""Columns the loaders add to raw (besides the file column, whose name is a setting)."""
MIN_PRECISION = 18
"""An inferred decimal's precision is at least this, so that later, bigger amounts still fit;
its scale is the most decimal places a value was written with."""


def pinned_spec(schema_tables: dict[str, Any], spec: SourceSpec, file_column: str = "_file") -> SourceSpec:
    """``spec`` with each inferred table's columns set to the ones raw's dlt schema
    (``schema_tables``, the pipeline's ``default_schema.tables``) holds for it."""
    tables = []
    for table in spec.tables:
        if table.inferred:
            held = schema_tables.get(table.name, {}).get("columns", {})
            internal = INTERNAL | {file_column}
            columns = tuple((n, _declared(c)) for n, c in held.items() if n not in internal)
            table = dataclasses.replace(table, columns=columns)
        tables.append(table)
    return dataclasses.replace(spec, tables=tuple(tables))


def _declared(column: dict[str, Any]) -> str:
    """The declared type of a column of dlt's schema."""
    kind = column.get("data_type")
    if kind == "decimal":
        return f"decimal({column.get('precision', 38)},{column.get('scale', 9)})"
    if kind == "bigint":
        return "integer" if column.get("precision") == 32 else "bigint"
    return {"bool": "boolean", "double": "double", "date": "date", "timestamp": "timestamp", "json": "json"}.get(
        str(kind), "text"
    )


def named(table: TableSpec, records: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """An inferred table's records with their field names as raw names its columns (dlt's
    snake_case: ``Order Date`` -> ``order_date``), so a name is pinned once, as raw holds it; a
    declared table's as they are (its names are identifiers already)."""
    if not table.inferred:
        return records
    naming = NamingConvention()
    names: dict[str, str] = {}
    out = []
    for line, record in records:
        out.append((line, {names.setdefault(k, naming.normalize_identifier(k)): v for k, v in record.items()}))
    return out


def evolve(
    con: duckdb.DuckDBPyConnection,
    table: TableSpec,
    records: list[tuple[int, dict[str, Any]]],
    where: str,
    parquet: Path | None = None,
) -> tuple[TableSpec, list[str]]:
    """An inferred table with the columns ``records`` bring that it does not hold yet, each typed
    from every value it has here (from ``parquet``'s schema for a Parquet file), and the summary's
    line naming them. A declared table, or records with nothing new, come back as they are."""
    if not table.inferred:
        return table, []
    held = {n for n, _ in table.columns}
    keys = [k for k in table.key_columns if k not in held]  # a key always lands (empty: quarantined)
    new = list(dict.fromkeys([*keys, *(n for _, record in records for n in record if n not in held)]))
    if not new:
        return table, []
    types = _from_arrow(pq.read_schema(parquet), new) if parquet else _from_text(con, records, new)
    for key in keys:
        if types.get(key) is None:
            types[key] = "text"
    added = tuple((n, t) for n in new if (t := types.get(n)))
    if not added:
        return table, []
    first = "" if table.columns else " (first load)"
    note = (
        f"{table.name}: column(s) {', '.join(f'{n} {t}' for n, t in added)} inferred from {where}{first} and "
        "pinned in raw; declare columns: in sources.yml to choose the types"
    )
    return dataclasses.replace(table, columns=table.columns + added), [note]


def _from_arrow(schema: pa.Schema, names: list[str]) -> dict[str, str | None]:
    naming = NamingConvention()
    fields = {naming.normalize_identifier(f.name): f.type for f in schema}
    types: dict[str, str | None] = {}
    for name in names:
        kind = fields.get(name, pa.null())
        if pa.types.is_null(kind):
            types[name] = None
        elif pa.types.is_integer(kind):
            types[name] = "bigint"
        elif pa.types.is_decimal(kind) and kind.precision <= 38:
            types[name] = f"decimal({kind.precision},{kind.scale})"
        elif pa.types.is_floating(kind):
            types[name] = "double"  # the file holds floats: raw keeps the very same values
        elif pa.types.is_boolean(kind):
            types[name] = "boolean"
        elif pa.types.is_date(kind):
            types[name] = "date"
        elif pa.types.is_timestamp(kind):
            types[name] = "timestamp"
        elif pa.types.is_nested(kind):
            types[name] = "json"
        else:
            types[name] = "text"
    return types


def _from_text(
    con: duckdb.DuckDBPyConnection, records: list[tuple[int, dict[str, Any]]], names: list[str]
) -> dict[str, str | None]:
    """Each column's narrowest type that holds every value exactly: boolean, bigint, an exact
    decimal, date, timestamp (to the microsecond: finer ones stay text), JSON (objects and lists),
    else text; None for a column with no value."""
    values = pa.table({n: pa.array([r.get(n) for _, r in records], pa.string()) for n in names})
    con.register("_infer", values)
    try:
        types: dict[str, str | None] = {}
        for name in names:
            c = 'trim("' + name.replace('"', '""') + '")'
            day = "[0-9]{4}-[0-9]{2}-[0-9]{2}"
            row = con.execute(
                f"""
                select
                    count({c}),
                    count(*) filter (where lower({c}) in ('true', 'false')),
                    count(*) filter (where regexp_full_match({c}, '[+-]?[0-9]+')
                                     and try_cast({c} as bigint) is not null),
                    count(*) filter (where regexp_full_match({c}, '[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)')),
                    max(length(ltrim(split_part(ltrim({c}, '+-'), '.', 1), '0'))),
                    max(length(split_part({c}, '.', 2))),
                    count(*) filter (where regexp_full_match({c}, '{day}')
                                     and try_cast({c} as date) is not null),
                    count(*) filter (where regexp_full_match({c}, '{day}[T ][0-9]{{2}}:[0-9]{{2}}.*')
                                     and try_cast({c} as timestamptz) is not null
                                     and not {finer_than_microseconds(c)}),
                    count(*) filter (where (starts_with({c}, '{{') or starts_with({c}, '[')) and json_valid({c}))
                from _infer
                """
            ).fetchone()
            n, bools, ints, numbers, whole, scale, dates, stamps, jsons = (int(v or 0) for v in row or ())
            if not n:
                types[name] = None
            elif bools == n:
                types[name] = "boolean"
            elif ints == n:
                types[name] = "bigint"
            elif numbers == n and whole + scale <= 38:
                types[name] = f"decimal({max(MIN_PRECISION, whole + scale)},{scale})"
            elif dates == n:
                types[name] = "date"
            elif stamps == n:
                types[name] = "timestamp"
            elif jsons == n:
                types[name] = "json"
            else:
                types[name] = "text"
        return types
    finally:
        con.unregister("_infer")
