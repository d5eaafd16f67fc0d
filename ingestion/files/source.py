"""A files source's tables for one run: parsed, typed and quarantined rows, as dlt resources."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dlt.extract.source import DltSource

from ingestion.declaration import SourceSpec, TableSpec
from ingestion.files.landing import LEDGER, FilesPlan, LandedFile
from ingestion.files.parse import FileError, parse
from ingestion.infer import evolve, named
from ingestion.rows import (
    absent,
    column_hints,
    contract,
    empty_rows,
    typed_rows,
    undeclared,
    undeclared_note,
    with_load_id,
)

QUARANTINE = "_quarantine"


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


def prepare(spec: SourceSpec, plan: FilesPlan, staging: Path, file_column: str = "_file") -> dict[str, PreparedTable]:
    """Parse and check every new file, one at a time (memory: one file), an inferred table's new
    columns typed from the file that brings them (``spec`` holds the pinned ones). Good rows go to parquet
    under ``staging``, each with its file's name in ``file_column``; bad rows to the plan's
    quarantine; a file that fails as a whole to the plan's failures, with nothing of it kept."""
    max_bad = float(spec.option("max_bad_share"))
    prepared = {t.name: PreparedTable(t) for t in spec.tables}
    staging.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    try:
        for order, landed in enumerate(plan.new):
            target = prepared[landed.table]
            where = f"source {spec.name!r}, table {target.table.name!r}"
            try:
                records, unparsable = parse(landed.path, target.table)
                records = named(target.table, records)
                parquet = landed.path if landed.path.name.lower().endswith(".parquet") else None
                table, inferred = evolve(con, target.table, records, f"file {landed.name}", parquet)
                extra = [] if table.inferred else undeclared(table, records)
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
            good = good.append_column(file_column, pa.array([landed.name] * good.num_rows, pa.string()))
            good = good.append_column("_file_order", pa.array([order] * good.num_rows, pa.int64()))
            target.table = table
            target.notes.extend(inferred)
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


def _table_resource(prepared: PreparedTable, create: bool, file_column: str) -> Any:
    table = prepared.table

    def read() -> Iterator[Any]:
        if create and not prepared.parts:
            yield with_load_id(empty_rows(table, f"_line BIGINT, {file_column} VARCHAR, _file_order BIGINT"))
        for part in prepared.parts:
            yield with_load_id(pq.read_table(part))

    return table_resource(table, read, file_column)


def table_resource(table: TableSpec, read: Callable[[], Iterator[Any]], file_column: str) -> Any:
    """A files table's dlt resource: ``read`` yields its rows (Arrow, with ``_line``,
    ``file_column`` and ``_file_order``)."""
    hints: dict[str, Any] = {"write_disposition": table.write_disposition, "columns": column_hints(table)}
    hints |= contract(table)
    if table.write_disposition == "merge" and table.key_columns:
        # a key in several files of one run: the last file (in name order) wins
        hints["primary_key"] = table.key_columns
        hints["columns"]["_file_order"] = {"dedup_sort": "desc"}
    elif table.write_disposition == "merge":
        hints["merge_key"] = file_column  # no key: a file loaded again replaces its own rows
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
    spec: SourceSpec,
    plan: FilesPlan,
    prepared: dict[str, PreparedTable],
    create: tuple[str, ...] = (),
    file_column: str = "_file",
) -> DltSource:
    """The dlt source of one landing folder: a resource per table with rows (and per table in
    ``create``, which raw lacks: created empty), the quarantined rows, and the ledger of the
    files loaded, all in one load package."""

    @dlt.source(name=spec.name, max_table_nesting=0)
    def source() -> Iterator[Any]:
        for item in prepared.values():
            if item.parts or item.table.name in create:
                yield _table_resource(item, item.table.name in create, file_column)
        if plan.quarantine:
            yield dlt.resource(plan.quarantine, name=QUARANTINE, write_disposition="append")
        if plan.ledger:
            yield dlt.resource(plan.ledger, name=LEDGER, write_disposition="merge", primary_key=["file", "sha256"])

    return source()
