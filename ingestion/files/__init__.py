"""File sources: CSV, JSONL and Parquet files (optionally gzipped) dropped into a landing folder.

Each file is loaded **exactly once**, identified by its name *and the SHA-256 of its content*: the
ledger table ``_files`` in raw records every (file, hash) loaded, and it is written in the same dlt
load package as the file's rows, so a crash either loads both or neither. A file replaced with new
content has a new hash and is loaded again (its rows replace the old version's by primary key, or
all of the file's rows when the table has no key). Names and sizes are not trusted: a file copied
again with the same content is skipped, whatever its modification time.

A column the files carry but ``sources.yml`` does not declare is not dropped: it lands in raw as
the file's text (nested JSON values as JSON), and the summary names it, so it can be declared
with a type. A declared column a CSV header or Parquet file lacks fails the file; one absent from
every record of a JSONL file is loaded as NULL and named in the summary.

Every row is checked against the declared column types. A row that does not fit (wrong number of
fields, a number or date that does not parse, an empty key, invalid JSON) goes to ``_quarantine``
with the file, line and reason, and the rest of the file loads, unless more than
``max_bad_share`` of its rows are bad: then nothing of the file loads and the source fails naming
it. A file that cannot be read at all (a truncated gzip, bad encoding, a missing column) fails the
same way, never as an empty load. Failed files are tried again on the next run.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dlt.common.destination.exceptions import DestinationUndefinedEntity
from dlt.extract.source import DltSource

from ingestion.config import SourceSpec, TableSpec

LEDGER = "_files"
QUARANTINE = "_quarantine"
IN_FLIGHT_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", ".crdownload")
"""Files being written (uploads name them so until they are complete): never read."""
ARCHIVE = "archive"
"""Loaded files move to this sub-folder of the landing folder (when ``archive: true``)."""

_DUCK_TYPES = {
    "text": "VARCHAR",
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "double": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMPTZ",
    "json": "JSON",
}


class FileError(RuntimeError):
    """A file that cannot be loaded at all (unreadable, truncated, too many bad rows)."""


def duck_type(declared: str) -> str:
    """The DuckDB type of a declared column type (``decimal(p,s)`` as is)."""
    return _DUCK_TYPES.get(declared, declared.upper())


@dataclass
class LandedFile:
    """One file of the landing folder and what to do with it."""

    table: str
    path: Path
    name: str
    """The path relative to the landing folder: the file's identity with its hash."""
    sha256: str
    size: int


@dataclass
class FilesPlan:
    """What one run loads from the landing folder."""

    landing: Path
    new: list[LandedFile] = field(default_factory=list)
    seen: list[LandedFile] = field(default_factory=list)
    """Files whose (name, hash) raw already holds: skipped (and archived, when asked)."""
    failures: list[str] = field(default_factory=list)
    """One message per file that could not be loaded."""
    loaded: list[LandedFile] = field(default_factory=list)
    """Files whose rows (and ledger row) go into this run's load package."""
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)


def landing_dir(spec: SourceSpec, default: Path, project_dir: Path) -> Path:
    """The source's landing folder: ``files.path`` (relative to the project) or ``default``."""
    configured = spec.option("path")
    if not configured:
        return default
    path = Path(configured)
    return path if path.is_absolute() else project_dir / path


def in_flight(path: Path) -> bool:
    """A file still being written by the usual conventions (hidden, or a temporary suffix)."""
    return path.name.startswith(".") or path.suffix.lower() in IN_FLIGHT_SUFFIXES


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ledger(pipeline: dlt.Pipeline) -> set[tuple[str, str]]:
    try:
        with pipeline.sql_client() as client:
            table = client.make_qualified_table_name(LEDGER)
            rows = client.execute_sql(f"select file, sha256 from {table}")
    except DestinationUndefinedEntity:
        return set()
    return {(str(f), str(h)) for f, h in rows or []}


def plan_files(pipeline: dlt.Pipeline, spec: SourceSpec, landing: Path) -> FilesPlan:
    """Find every table's files in the landing folder and split them into new and loaded."""
    if not landing.is_dir():
        raise FileError(f"source {spec.name!r}: the landing folder {landing} does not exist")
    loaded = _ledger(pipeline)
    plan = FilesPlan(landing)
    claimed: dict[Path, str] = {}
    for table in spec.tables:
        for path in sorted(landing.glob(table.pattern)):
            if not path.is_file() or ARCHIVE in path.relative_to(landing).parts[:1] or in_flight(path):
                continue
            if path in claimed:
                raise FileError(
                    f"source {spec.name!r}: file {path.name} matches the patterns of tables "
                    f"{claimed[path]!r} and {table.name!r}"
                )
            claimed[path] = table.name
            name = str(path.relative_to(landing))
            landed = LandedFile(table.name, path, name, _sha256(path), path.stat().st_size)
            (plan.seen if (name, landed.sha256) in loaded else plan.new).append(landed)
    return plan


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
    names = [c for c, _ in table.columns]
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
        for i, row in enumerate(data.to_pylist(), start=1):
            records.append((i, {k: _text(v) for k, v in row.items()}))
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


def json_record(text: str, as_json: frozenset[str] = frozenset()) -> dict[str, str | None] | str:
    """The fields of one JSON object, as text (nested values, and every value of the columns
    ``as_json``, as JSON); or, when the text is not a JSON object, the reason why not."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg})"
    if not isinstance(value, dict):
        return "not a JSON object"
    return {
        str(k): json.dumps(v, ensure_ascii=False) if k in as_json and v is not None else _text(v)
        for k, v in value.items()
    }


def json_columns(table: TableSpec) -> frozenset[str]:
    """The columns declared ``json``."""
    return frozenset(n for n, t in table.columns if t == "json")


def _text(value: Any) -> str | None:
    """A value as raw's text: nested values (JSON objects and lists, Parquet structs, lists and
    maps) as JSON, bytes as hex, never a Python repr."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


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


@dataclass
class PreparedTable:
    """One table's checked rows of this run: a parquet file per landed file, in name order."""

    table: TableSpec
    parts: list[Path] = field(default_factory=list)
    quarantined: int = 0
    notes: list[str] = field(default_factory=list)
    """Columns of the files that are not declared (they land as text), declared ones absent."""
    replaced: int = 0
    """Good rows whose key a later file of this run has too (merged: the later file's row wins)."""


def prepare(spec: SourceSpec, plan: FilesPlan, staging: Path) -> dict[str, PreparedTable]:
    """Parse and check every new file, one at a time (memory: one file). Good rows go to parquet
    under ``staging``; bad rows to the plan's quarantine; a file that fails as a whole to the
    plan's failures, with nothing of it kept."""
    max_bad = float(spec.option("max_bad_share"))
    prepared = {t.name: PreparedTable(t) for t in spec.tables}
    staging.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        for order, landed in enumerate(plan.new):
            table = spec.table(landed.table)
            where = f"source {spec.name!r}, table {table.name!r}"
            try:
                records, unparsable = parse(landed.path, table)
                extra = undeclared(table, records)
                good, checked = typed_rows(con, table, records, extra=extra)
            except FileError as exc:
                plan.failures.append(f"{where}: {exc}")
                continue
            bad = sorted(unparsable + checked)
            total = good.num_rows + len(bad)
            if total and len(bad) > max_bad * total:
                plan.failures.append(
                    f"{where}: file {landed.name}: {len(bad)} of {total} rows are bad (more than "
                    f"max_bad_share={max_bad}); nothing loaded. First: line {bad[0][0]}: {bad[0][1]}"
                )
                continue
            now = datetime.now(UTC)
            good = good.append_column("_file", pa.array([landed.name] * good.num_rows, pa.string()))
            good = good.append_column("_file_order", pa.array([order] * good.num_rows, pa.int64()))
            target = prepared[table.name]
            if extra:
                target.notes.append(undeclared_note(table.name, extra, f"file {landed.name}"))
            missing = absent(table, records)
            if missing:
                target.notes.append(
                    f"{table.name}: declared column(s) {missing} are in no record of file {landed.name}: loaded as NULL"
                )
            if good.num_rows:
                path = staging / f"{order:06d}.parquet"
                pq.write_table(good, path)
                target.parts.append(path)
            target.quarantined += len(bad)
            plan.quarantine.extend(_quarantine_rows(table.name, landed, bad, now))
            plan.ledger.append(
                {
                    "file": landed.name,
                    "sha256": landed.sha256,
                    "table_name": table.name,
                    "size_bytes": landed.size,
                    "rows_loaded": good.num_rows,
                    "rows_quarantined": len(bad),
                    "loaded_at": now,
                }
            )
            plan.loaded.append(landed)
        for target in prepared.values():
            table = target.table
            if target.parts and table.key_columns and table.write_disposition == "merge":
                keys = ", ".join(f'"{k}"' for k in table.key_columns)
                files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in target.parts)
                (target.replaced,) = con.execute(
                    f"SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT {keys} FROM read_parquet([{files}]))) "
                    f"FROM read_parquet([{files}])"
                ).fetchone() or (0,)
    finally:
        con.close()
    return prepared


def empty_rows(table: TableSpec, extra: str) -> pa.Table:
    """No rows, with the declared columns' types and ``extra`` (``"name TYPE, ..."``): yielded
    so that a table with nothing to load yet still exists in raw for dbt."""
    con = duckdb.connect()
    try:
        columns = ", ".join(f'CAST(NULL AS {duck_type(t)}) AS "{n}"' for n, t in table.columns)
        extras = ", ".join(f"CAST(NULL AS {e.split()[1]}) AS {e.split()[0]}" for e in extra.split(", "))
        return con.execute(f"SELECT {columns}, {extras} LIMIT 0").to_arrow_table()
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


def missing_tables(pipeline: dlt.Pipeline, spec: SourceSpec) -> list[TableSpec]:
    """Declared tables raw does not have yet."""
    known: dict[str, Any] = pipeline.default_schema.tables if pipeline.default_schema_name else {}
    return [t for t in spec.tables if t.name not in known]


def _table_resource(prepared: PreparedTable, create: bool) -> Any:
    table = prepared.table

    def read() -> Iterator[Any]:
        if create and not prepared.parts:
            yield with_load_id(empty_rows(table, "_line BIGINT, _file VARCHAR, _file_order BIGINT"))
        for part in prepared.parts:
            yield with_load_id(pq.read_table(part))

    hints: dict[str, Any] = {"write_disposition": table.write_disposition, "columns": column_hints(table)}
    if table.write_disposition == "merge" and table.key_columns:
        # a key in several files of one run: the last file (in name order) wins
        hints["primary_key"] = table.key_columns
        hints["columns"]["_file_order"] = {"dedup_sort": "desc"}
    elif table.write_disposition == "merge":
        hints["merge_key"] = "_file"  # no key: a file loaded again replaces its own rows
    return dlt.resource(read, name=table.name, **hints)


def _quarantine_rows(
    table: str, landed: LandedFile, bad: list[tuple[int, str, str]], now: datetime
) -> list[dict[str, Any]]:
    return [
        {
            "source_table": table,
            "file": landed.name,
            "sha256": landed.sha256,
            "line": line,
            "reason": reason,
            "record": record,
            "quarantined_at": now,
        }
        for line, reason, record in bad
    ]


def files_source(
    spec: SourceSpec, plan: FilesPlan, prepared: dict[str, PreparedTable], create: tuple[str, ...] = ()
) -> DltSource:
    """The dlt source of one landing folder: a resource per table with rows (and per table in
    ``create``, which raw lacks: created empty), the quarantined rows, and the ledger of the
    files loaded, all in one load package."""

    @dlt.source(name=spec.name, max_table_nesting=0)
    def source() -> Iterator[Any]:
        for item in prepared.values():
            if item.parts or item.table.name in create:
                yield _table_resource(item, item.table.name in create)
        if plan.quarantine:
            yield dlt.resource(plan.quarantine, name=QUARANTINE, write_disposition="append")
        if plan.ledger:
            yield dlt.resource(plan.ledger, name=LEDGER, write_disposition="merge", primary_key=["file", "sha256"])

    return source()


def archive(plan: FilesPlan) -> list[Path]:
    """Move loaded (and already-loaded) files to the landing folder's archive sub-folder."""
    moved = []
    for landed in plan.loaded + plan.seen:
        target = plan.landing / ARCHIVE / landed.name
        if target.exists():
            target = target.with_name(f"{landed.sha256[:12]}-{target.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(landed.path), target)
        moved.append(target)
    return moved
