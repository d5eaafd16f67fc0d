"""Reading one landed file (CSV, JSON lines, Parquet; gzip) into records, and its bad lines."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ingestion.declaration import TableSpec
from ingestion.rows import cell_text, json_columns, json_record


class FileError(RuntimeError):
    """A file that cannot be loaded at all (unreadable, truncated, too many bad rows)."""


def _read_text(path: Path) -> str:
    """The whole text of a (gzipped) file; a truncated or corrupt file raises FileError."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
        return data.decode("utf-8-sig")
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise FileError(f"file {path.name}: cannot be read ({exc or type(exc).__name__}); nothing loaded") from None
    except UnicodeDecodeError as exc:
        raise FileError(
            f"file {path.name}: not UTF-8 text ({exc.reason} at byte {exc.start}); nothing loaded"
        ) from None


def _format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix, kind in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return kind
    raise FileError(f"file {path.name}: unknown format (expected .csv, .jsonl or .parquet, optionally .gz)")


def parse(path: Path, table: TableSpec) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str, str]]]:
    """The file's records as (line, {column: text}), undeclared columns included, and its
    unparsable lines as (line, reason, text). Raises FileError when the file as a whole cannot be
    read."""
    # an inferred table's pinned columns may be missing from a file: they load as NULL, named
    names = [] if table.inferred else [c for c, _ in table.columns]
    kind = _format(path)
    records: list[tuple[int, dict[str, Any]]] = []
    bad: list[tuple[int, str, str]] = []
    if kind == "parquet":
        try:
            data = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise FileError(f"file {path.name}: not a readable parquet file ({exc}); nothing loaded") from None
        missing = [n for n in names if n not in data.column_names]
        if missing:
            raise FileError(f"file {path.name}: column(s) {missing} missing; nothing loaded")
        data = _nanoseconds_as_text(data)
        for i, row in enumerate(data.to_pylist(), start=1):
            records.append((i, {k: cell_text(v) for k, v in row.items()}))
        return records, bad
    text = _read_text(path)
    if kind == "jsonl":
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                record = json_record(line, json_columns(table))
                if isinstance(record, str):
                    bad.append((i, record, line))
                else:
                    records.append((i, record))
        return records, bad
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise FileError(f"file {path.name}: empty (no header line); nothing loaded")
    header = [h.strip() for h in header]
    missing = [n for n in names if n not in header]
    if missing:
        raise FileError(f"file {path.name}: header lacks column(s) {missing}; nothing loaded")
    if "" in header or len(set(header)) != len(header):
        raise FileError(f"file {path.name}: the header has an empty or repeated column name {header}; nothing loaded")
    for fields in reader:
        number = reader.line_num
        if not fields:
            continue
        if len(fields) != len(header):
            bad.append((number, f"expected {len(header)} fields, found {len(fields)}", ",".join(fields)))
            continue
        records.append((number, {n: (v if v != "" else None) for n, v in zip(header, fields, strict=True)}))
    return records, bad


def _nanoseconds_as_text(data: pa.Table) -> pa.Table:
    """``data`` with its nanosecond timestamps and times as their full text (Python's datetime
    holds microseconds: Arrow refuses to convert one with a finer digit). The typing then loads
    each value to the microsecond, or quarantines the one with a digit below it, naming it."""
    for i, field in enumerate(data.schema):
        kind = field.type
        if (pa.types.is_timestamp(kind) or pa.types.is_time64(kind)) and kind.unit == "ns":
            data = data.set_column(i, field.name, data.column(i).cast(pa.string()))
    return data
