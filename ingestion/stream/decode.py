"""Messages as rows: each JSON message typed against the declaration by DuckDB; poison messages
(not JSON, no key, a value that does not fit) kept for quarantine with the reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
from nats.aio.msg import Msg

from ingestion.declaration import TableSpec
from ingestion.infer import evolve, named
from ingestion.rows import (
    absent,
    json_columns,
    json_record,
    typed_rows,
    undeclared,
    undeclared_note,
)


def decode(table: TableSpec, messages: list[Msg]) -> tuple[TableSpec, pa.Table, list[dict[str, Any]], list[str]]:
    """The table (an inferred one with the fields this batch brings new), typed rows (with
    ``_stream_seq``) of the good messages, quarantine rows of the poison ones, and the summary's
    lines about fields the messages carry undeclared (kept as text), lack, or bring new."""
    records: list[tuple[int, dict[str, Any]]] = []
    bad: list[tuple[int, str, str]] = []
    as_json = json_columns(table)
    for message in messages:
        seq = int(message.metadata.sequence.stream)
        text = message.data.decode("utf-8", errors="replace")
        record = json_record(text, as_json)
        if isinstance(record, str):
            bad.append((seq, record, text))
        else:
            records.append((seq, record))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        # a message published twice (a producer's retry) is no error: the merge keeps the last
        records = named(table, records)
        table, inferred = evolve(con, table, records, f"subject {table.subject}")
        extra = [] if table.inferred else undeclared(table, records)
        good, checked = typed_rows(con, table, records, quarantine_duplicates=False, extra=extra)
    finally:
        con.close()
    good = good.rename_columns([*(c for c, _ in table.columns), *extra, "_stream_seq"])
    now = datetime.now(UTC)
    quarantine = [
        {
            "source_table": table.name,
            "subject": table.subject,
            "stream_seq": seq,
            "reason": reason,
            "record": record,
            "quarantined_at": now,
        }
        for seq, reason, record in sorted(bad + checked)
    ]
    notes = inferred + ([undeclared_note(table.name, extra, f"subject {table.subject}")] if extra else [])
    missing = absent(table, records)
    if missing:
        notes.append(
            f"{table.name}: declared column(s) {missing} are in no message of this batch on subject "
            f"{table.subject}: loaded as NULL"
        )
    return table, good, quarantine, notes


def distinct_keys(rows: pa.Table, table: TableSpec) -> int:
    if not rows.num_rows:
        return 0
    return int(rows.group_by(table.key_columns).aggregate([]).num_rows)
