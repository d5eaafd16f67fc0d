"""A fetched batch as dlt resources: the rows, the quarantine, the tables dbt reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dlt
import pyarrow as pa
from dlt.extract.source import DltSource

from ingestion.declaration import SourceSpec, TableSpec
from ingestion.rows import (
    column_hints,
    contract,
    empty_rows,
    with_load_id,
)
from ingestion.stream.reader import Batch

QUARANTINE = "_quarantine"


def _rows(rows: pa.Table) -> Iterator[pa.Table]:
    yield with_load_id(rows)


def table_resource(table: TableSpec, rows: pa.Table) -> Any:
    """A stream table's dlt resource: merged on its key, the last message by sequence winning."""
    return dlt.resource(
        _rows(rows),
        name=table.name,
        write_disposition="merge",
        primary_key=table.key_columns,
        columns={**column_hints(table), "_stream_seq": {"dedup_sort": "desc"}},
        **contract(table),
    )


def stream_source(spec: SourceSpec, batch: Batch, create: tuple[str, ...] = ()) -> DltSource:
    """The dlt source of one micro-batch: a resource per table, merged on its key (a redelivered
    message replaces itself), and the quarantined messages. Tables in ``create`` (which raw
    lacks) are created even without rows."""

    @dlt.source(name=spec.name, max_table_nesting=0)
    def source() -> Iterator[Any]:
        for declared in spec.tables:
            table = batch.tables.get(declared.name, declared)
            rows = batch.rows.get(table.name)
            if (rows is None or not rows.num_rows) and table.name in create:
                rows = empty_rows(table, "_stream_seq BIGINT")
            if rows is not None and (rows.num_rows or table.name in create):
                yield table_resource(table, rows)
        if batch.quarantine:
            yield dlt.resource(
                batch.quarantine,
                name=QUARANTINE,
                write_disposition="merge",
                primary_key=["source_table", "stream_seq"],
            )

    return source()
