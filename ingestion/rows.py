"""Rows of declared columns, shared by the files and stream kinds: typed by DuckDB against the
declaration, undeclared columns kept as text and named, absent ones named, JSON as JSON."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import dlt
import duckdb
import pyarrow as pa

from ingestion.column_types import (
    DECIMAL,
    FINER_THAN_MICROSECONDS_REASON,
    duck_type,
    finer_than_microseconds,
)
from ingestion.declaration import SourceSpec, TableSpec


def json_record(text: str, as_json: frozenset[str] = frozenset()) -> dict[str, str | None] | str:
    """The fields of one JSON object, as text (nested values, and every value of the columns
    ``as_json``, as JSON); or, when the text is not a JSON object, the reason why not. Numbers
    are read as written (a fraction as a Decimal, never a float that would round it)."""
    try:
        value = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg})"
    if not isinstance(value, dict):
        return "not a JSON object"
    return {str(k): _json_text(v) if k in as_json and v is not None else cell_text(v) for k, v in value.items()}


def json_columns(table: TableSpec) -> frozenset[str]:
    """The columns declared ``json``."""
    return frozenset(n for n, t in table.columns if t == "json")


def cell_text(value: Any) -> str | None:
    """A value as raw's text: nested values (JSON objects and lists, Parquet structs, lists and
    maps) as JSON, bytes as hex, never a Python repr."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, dict | list | tuple):
        return _json_text(value)
    return str(value)


def _json_text(value: Any) -> str:
    """A nested value as JSON text (its fractions as JSON numbers again)."""
    return json.dumps(value, default=lambda v: float(v) if isinstance(v, Decimal) else str(v), ensure_ascii=False)


def undeclared(table: TableSpec, records: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """The columns the records carry that the table does not declare, in order of appearance."""
    declared = {n for n, _ in table.columns}
    found: dict[str, None] = {}
    for _, record in records:
        for name in record:
            if name not in declared:
                found.setdefault(name)
    return list(found)


def absent(table: TableSpec, records: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """The declared columns no record carries (JSON: the key is in no object)."""
    seen = {name for _, record in records for name in record}
    return [n for n, _ in table.columns if n not in seen] if records else []


def undeclared_note(table: str, columns: list[str], where: str) -> str:
    """The summary's line about columns that reached raw without a declaration."""
    return (
        f"{table}: column(s) {columns} of {where} are not declared in sources.yml: they landed in raw as "
        "text; declare them under columns: to give them a type"
    )


def _value(name: str, declared: str) -> str:
    """The text to cast: surrounding spaces are dropped except for text columns."""
    return f'"{name}"' if declared == "text" else f'trim("{name}")'


def _rounds(value: str, declared: str) -> str | None:
    """SQL that is true where casting ``value`` (text) to the declared number type would round
    it (DuckDB's cast rounds ``'2.5'`` to an integer 3 and ``'1.005'`` to decimal(12,2) 1.01):
    plain notation by its significant decimal places, scientific notation by comparing as
    doubles. None for the other types."""
    decimal = DECIMAL.match(declared)
    scale = int(decimal[2]) if decimal else 0 if declared in ("integer", "bigint") else None
    if scale is None:
        return None
    places = f"length(regexp_extract({value}, '\\.([0-9]*?)0*$', 1))"
    as_double = f"TRY_CAST({value} AS DOUBLE)"
    return (
        f"CASE WHEN regexp_full_match({value}, '[+-]?[0-9]*\\.?[0-9]*') THEN {places} > {scale} "
        f"ELSE {as_double} <> TRY_CAST(TRY_CAST({value} AS {duck_type(declared)}) AS DOUBLE) END"
    )


def typed_rows(
    con: duckdb.DuckDBPyConnection,
    table: TableSpec,
    records: list[tuple[int, dict[str, Any]]],
    quarantine_duplicates: bool = True,
    extra: list[str] | None = None,
) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """Cast the records to the declared types, ``extra`` (undeclared) columns kept as text:
    (good rows with ``_line``, bad rows as (line, reason, record)). A value that does not cast or
    an empty key makes a row bad, and so does a key repeated later in the file (the last line
    wins) when ``quarantine_duplicates``."""
    columns = [*table.columns, *((name, "text") for name in extra or [])]
    names = [c for c, _ in columns]
    text = pa.table(
        {"_line": pa.array([r[0] for r in records], pa.int64())}
        | {n: pa.array([r[1].get(n) for r in records], pa.string()) for n in names}
    )
    con.register("_records", text)
    checks = []
    for name, declared in columns:
        col = f'trim("{name}")' if declared != "text" else f'"{name}"'
        checks.append(
            f'CASE WHEN "{name}" IS NOT NULL AND TRY_CAST({col} AS {duck_type(declared)}) IS NULL '
            f"THEN 'column {name}: ' || to_json(\"{name}\")::VARCHAR || ' is not a {declared}' END"
        )
        rounds = _rounds(col, declared)
        if rounds:
            checks.append(
                f"CASE WHEN {rounds} THEN 'column {name}: ' || to_json(\"{name}\")::VARCHAR || "
                f"' has more decimal places than its declared type {declared} holds (it would be rounded)' END"
            )
        if declared == "timestamp":
            checks.append(
                f"CASE WHEN {finer_than_microseconds(col)} THEN 'column {name}: ' || to_json(\"{name}\")::VARCHAR || "
                f"' {FINER_THAN_MICROSECONDS_REASON}' END"
            )
    checks += [f"CASE WHEN \"{k}\" IS NULL THEN 'primary key column {k} is empty' END" for k in table.key_columns]
    keys = ", ".join(f'"{k}"' for k in table.key_columns)
    if keys and quarantine_duplicates:
        checks.append(
            f"CASE WHEN _line < max(_line) OVER (PARTITION BY {keys}) THEN 'duplicate key: line ' || "
            f"max(_line) OVER (PARTITION BY {keys}) || ' of the file has the same key and wins' END"
        )
    reason = f"coalesce({', '.join(checks)})"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _checked AS SELECT *, {reason} AS _reason FROM _records")
    casts = ", ".join(f'TRY_CAST({_value(n, t)} AS {duck_type(t)}) AS "{n}"' for n, t in columns)
    good = con.execute(f"SELECT {casts}, _line FROM _checked WHERE _reason IS NULL ORDER BY _line").to_arrow_table()
    record = "to_json(struct_pack(" + ", ".join(f'"{n}" := "{n}"' for n in names) + "))::VARCHAR"
    bad = con.execute(
        f"SELECT _line, _reason, {record} FROM _checked WHERE _reason IS NOT NULL ORDER BY _line"
    ).fetchall()
    con.unregister("_records")
    return good, [(int(line), str(why), str(rec)) for line, why, rec in bad]


def empty_rows(table: TableSpec, extra: str) -> pa.Table:
    """No rows, with the declared columns' types and ``extra`` (``"name TYPE, ..."``): yielded
    so that a table with nothing to load yet still exists in raw for dbt."""
    con = duckdb.connect()
    try:
        columns = [f'CAST(NULL AS {duck_type(t)}) AS "{n}"' for n, t in table.columns]
        columns += [f"CAST(NULL AS {e.split()[1]}) AS {e.split()[0]}" for e in extra.split(", ")]
        return con.execute(f"SELECT {', '.join(columns)} LIMIT 0").to_arrow_table()
    finally:
        con.close()


def with_load_id(rows: pa.Table) -> pa.Table:
    """``rows`` with dlt's ``_dlt_load_id`` (the project has dlt add it only to JSON items)."""
    load_id = dlt.current.load_package_state()["load_id"]
    return rows.append_column("_dlt_load_id", pa.array([load_id] * rows.num_rows, pa.string()))


def column_hints(table: TableSpec) -> dict[str, Any]:
    """dlt's hints for the declared columns: JSON where declared ``json`` (Arrow carries it as
    text), and the key columns nullable so Arrow's columns pass as they are (rows with an empty
    key never get this far: they are quarantined)."""
    hints: dict[str, Any] = {n: {"data_type": "json"} for n, t in table.columns if t == "json"}
    for key in table.key_columns:
        hints.setdefault(key, {})["nullable"] = True
    return hints


def contract(table: TableSpec) -> dict[str, Any]:
    """dlt's schema contract of a table: an inferred table's pinned types are frozen in raw's
    schema (its rows are already cast to them; a different type would stop the load), new
    columns evolve it."""
    return {"schema_contract": {"columns": "evolve", "data_type": "freeze"}} if table.inferred else {}


def missing_tables(pipeline: dlt.Pipeline, spec: SourceSpec) -> list[TableSpec]:
    """Declared tables raw does not have yet."""
    known: dict[str, Any] = pipeline.default_schema.tables if pipeline.default_schema_name else {}
    return [t for t in spec.tables if t.name not in known]
