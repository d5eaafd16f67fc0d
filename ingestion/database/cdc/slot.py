"""The server side of CDC: the publication and the replication slot (setup, drop, checks), and
reading the changes up to the run's bound into parquet parts (inserts' and updates' new rows
decoded in bulk)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from ingestion.database import pgoutput, scan
from ingestion.database.scan import SourceColumn
from ingestion.declaration import SourceSpec, TableSpec

PART_ROWS = 50_000
"""Changes buffered in memory per table before they are written to a parquet part."""

_META = ("_seq", "_op", "_lsn", "_ts", "_unknown")
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class CdcError(RuntimeError):
    """Change data capture is not set up, not possible, or its position was lost."""


def connect(url: sa.URL) -> psycopg.Connection[Any]:
    """A psycopg connection to the source, with the session settings the text values rely on."""
    conn = psycopg.connect(
        host=url.host or "localhost",
        port=url.port or 5432,
        user=url.username or "",
        password=url.password or "",
        dbname=url.database or "",
        # the text forms DuckDB's casts read: ISO dates, UTC offsets, postgres-style intervals
        options=scan.POSTGRES_SESSION,
    )
    return conn


def cdc_tables(spec: SourceSpec) -> list[TableSpec]:
    """The source's tables declared with ``deletes: cdc``."""
    return [t for t in spec.tables if t.deletes == "cdc"]


def _wal_level(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW wal_level").fetchone()
    return str(row[0]) if row else ""


def _require_logical(conn: psycopg.Connection[Any], spec: SourceSpec) -> None:
    level = _wal_level(conn)
    if level != "logical":
        raise CdcError(
            f"source {spec.name!r}: the server runs with wal_level={level}; CDC needs wal_level=logical "
            "(ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)"
        )


def setup(url: sa.URL, spec: SourceSpec) -> list[str]:
    """Create (or bring up to date) the publication of the source's CDC tables and its slot.
    Returns one line per thing done. Idempotent."""
    tables = cdc_tables(spec)
    if not tables:
        raise CdcError(f"source {spec.name!r}: no table is declared with deletes: cdc")
    done = []
    with connect(url) as conn:
        conn.autocommit = True
        _require_logical(conn, spec)
        for table in tables:
            _check_key(conn, spec, table)
        names = ", ".join(f'public."{t.name}"' for t in tables)
        exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (spec.cdc_publication,)).fetchone()
        verb = "SET TABLE" if exists else "FOR TABLE"
        action = "ALTER" if exists else "CREATE"
        conn.execute(f'{action} PUBLICATION "{spec.cdc_publication}" {verb} {names}'.encode())
        done.append(f"publication {spec.cdc_publication}: {', '.join(t.name for t in tables)}")
        slot = _slot(conn, spec)
        if slot is None:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (spec.cdc_slot,))
            done.append(f"replication slot {spec.cdc_slot} created (pgoutput)")
        else:
            done.append(f"replication slot {spec.cdc_slot} exists (confirmed up to {slot[1]})")
    return done


def drop(url: sa.URL, spec: SourceSpec) -> list[str]:
    """Drop the source's slot and publication (the server stops keeping WAL for it)."""
    done = []
    with connect(url) as conn:
        conn.autocommit = True
        if _slot(conn, spec) is not None:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (spec.cdc_slot,))
            done.append(f"replication slot {spec.cdc_slot} dropped")
        conn.execute(f'DROP PUBLICATION IF EXISTS "{spec.cdc_publication}"'.encode())
        done.append(f"publication {spec.cdc_publication} dropped")
    return done


def _slot(conn: psycopg.Connection[Any], spec: SourceSpec) -> tuple[str, str, str] | None:
    """(plugin, confirmed_flush_lsn, database) of the source's slot, or None."""
    row = conn.execute(
        "SELECT plugin, confirmed_flush_lsn::text, database FROM pg_replication_slots WHERE slot_name = %s",
        (spec.cdc_slot,),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]), str(row[2]))


def _check_key(conn: psycopg.Connection[Any], spec: SourceSpec, table: TableSpec) -> None:
    """The declared primary key must be the table's replica identity, or deletes would arrive
    without it."""
    row = conn.execute(
        "SELECT c.relreplident, "
        "  (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_index i "
        "   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "   WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) "
        "     OR (c.relreplident = 'i' AND i.indisreplident))) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (table.name,),
    ).fetchone()
    where = f"source {spec.name!r}, table {table.name!r}"
    if row is None:
        raise CdcError(f"{where}: the table is not in the source database (schema public)")
    identity, keys = row
    if identity == "f":
        return  # REPLICA IDENTITY FULL: deletes carry the whole row
    if identity == "n" or sorted(keys or []) != sorted(table.key_columns):
        raise CdcError(
            f"{where}: deletes would not carry the declared primary key {table.key_columns} "
            f"(replica identity key: {keys or 'none'}). Give the table that primary key, or "
            f'ALTER TABLE "{table.name}" REPLICA IDENTITY FULL'
        )


def check_ready(url: sa.URL, spec: SourceSpec, tables: list[TableSpec]) -> int:
    """Check the slot and the publication are in place for ``tables``; return the server's
    current WAL position, the bound of this run."""
    with connect(url) as conn:
        _require_logical(conn, spec)
        slot = _slot(conn, spec)
        hint = f"run `dusk cdc setup {spec.name}` (or `make cdc-setup SOURCE={spec.name}`)"
        if slot is None:
            raise CdcError(f"source {spec.name!r}: replication slot {spec.cdc_slot!r} does not exist; {hint}")
        if slot[0] != "pgoutput" or slot[2] != (url.database or ""):
            raise CdcError(
                f"source {spec.name!r}: replication slot {spec.cdc_slot!r} uses plugin {slot[0]} on database "
                f"{slot[2]}, not pgoutput on {url.database}; drop it and {hint}"
            )
        published = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = %s AND schemaname = 'public'",
                (spec.cdc_publication,),
            ).fetchall()
        }
        missing = [t.name for t in tables if t.name not in published]
        if missing:
            raise CdcError(
                f"source {spec.name!r}: table(s) {missing} are not in publication {spec.cdc_publication!r}; {hint}"
            )
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return pgoutput.lsn_int(str(row[0]))


@dataclass
class _Tuples:
    """Inserts and updates whose new rows are still pgoutput bytes, decoded together at a flush
    (:func:`pgoutput.tuples`): one relation layout's."""

    index: tuple[int, ...]
    """Per column of the table, its position in the relation's tuples (-1: not sent)."""
    count: int
    """The relation's number of columns."""
    seq: list[int] = field(default_factory=list)
    op: list[str] = field(default_factory=list)
    lsn: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    """Commit times, microseconds since 1970."""
    datas: list[bytes] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)


_PENDING_BYTES = 64 << 20
"""Bytes of undecoded tuples a table buffers before they are decoded and written to a part."""


@dataclass
class TableChanges:
    """The decoded changes of one table: parquet parts of text values, and truncates."""

    spec: TableSpec
    columns: list[str]
    folder: Path
    parts: list[Path] = field(default_factory=list)
    truncates: list[tuple[int, int, datetime]] = field(default_factory=list)
    """(sequence number, commit LSN, commit time) of each TRUNCATE."""
    count: int = 0
    convert: dict[int, Callable[[str], str]] = field(default_factory=dict)
    """Per column position, how the log's text becomes the text raw's read path expects (arrays as
    to_json writes them, money as its numeric): the snapshot reads those at the source."""
    moved_unknown: bool = False
    """Some update changed the key and left values out of the stream (see ``_fill_moves`` in :mod:`.resolve`)."""
    _rows: list[list[Any]] = field(default_factory=list)
    _tuples: dict[tuple[tuple[int, ...], int], _Tuples] = field(default_factory=dict)
    _buffered: int = 0
    _pending_bytes: int = 0

    def add(self, seq: int, op: str, lsn: int, ts: datetime, values: list[Any]) -> None:
        """One change; ``values`` (in the order of ``columns``) are text, None (NULL) or
        ``pgoutput.UNCHANGED`` (not in the stream: taken from earlier changes or raw)."""
        unknown: list[str] = []
        for i, convert in self.convert.items():
            if isinstance(values[i], str):
                values[i] = convert(values[i])
        if pgoutput.UNCHANGED in values:
            unknown = [c for c, v in zip(self.columns, values, strict=True) if v is pgoutput.UNCHANGED]
            values = [None if v is pgoutput.UNCHANGED else v for v in values]
            self.moved_unknown = self.moved_unknown or op == "M"
        self._rows.append([seq, op, lsn, ts, unknown, *values])
        self._added(0)

    def add_tuple(
        self, seq: int, op: str, lsn: int, ts_us: int, data: bytes, start: int, index: tuple[int, ...], count: int
    ) -> None:
        """One insert or update whose new row is the pgoutput tuple at ``start`` of ``data``, of a
        relation of ``count`` columns laid out as ``index`` (see :class:`_Tuples`)."""
        pending = self._tuples.get((index, count))
        if pending is None:
            pending = self._tuples[(index, count)] = _Tuples(index, count)
        pending.seq.append(seq)
        pending.op.append(op)
        pending.lsn.append(lsn)
        pending.ts.append(ts_us)
        pending.datas.append(data)
        pending.starts.append(start)
        self._added(len(data))

    def _added(self, size: int) -> None:
        self.count += 1
        self._buffered += 1
        self._pending_bytes += size
        if self._buffered >= PART_ROWS or self._pending_bytes >= _PENDING_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the buffered changes to parquet parts."""
        if self._rows:
            types = [pa.int64(), pa.string(), pa.int64(), _TIMESTAMP, pa.list_(pa.string())]
            types += [pa.string()] * len(self.columns)
            rows = zip(*self._rows, strict=True)
            self._write([pa.array(column, type=t) for column, t in zip(rows, types, strict=True)])
            self._rows = []
        for pending in self._tuples.values():
            try:
                decoded = self._decoded(pending)
            except pgoutput.DecodeError as exc:
                raise pgoutput.DecodeError(f"the log's changes of table {self.spec.name!r}: {exc}") from None
            self._write(decoded)
        self._tuples = {}
        self._buffered = self._pending_bytes = 0

    def _decoded(self, pending: _Tuples) -> list[pa.Array]:
        """The columns of a part from undecoded tuples, as :meth:`add` would have made them."""
        values, unchanged = pgoutput.tuples(pending.datas, pending.starts, pending.count)
        rows = len(pending.seq)
        columns: list[pa.Array] = []
        unknown = np.zeros((rows, len(self.columns)), dtype=bool)
        for j, i in enumerate(pending.index):
            if i < 0:  # a column the relation does not send (added since): unknown, not NULL
                columns.append(pa.nulls(rows, pa.string()))
                unknown[:, j] = True
                continue
            column = values[i]
            convert = self.convert.get(j)
            if convert is not None:
                column = pa.array([None if v is None else convert(v) for v in column.to_pylist()], pa.string())
            columns.append(column)
            unknown[:, j] = unchanged[:, i]
        which, where = np.nonzero(unknown)  # row by row, each row's columns in order
        names = pa.array(np.asarray(self.columns, dtype=object)[where], pa.string())
        offsets = np.zeros(rows + 1, dtype=np.int32)
        np.cumsum(np.bincount(which, minlength=rows), out=offsets[1:])
        meta = [
            pa.array(pending.seq, pa.int64()),
            pa.array(pending.op, pa.string()),
            pa.array(pending.lsn, pa.int64()),
            pa.array(pending.ts, pa.int64()).cast(_TIMESTAMP),
            pa.ListArray.from_arrays(pa.array(offsets), names),
        ]
        return meta + columns

    def _write(self, arrays: list[pa.Array]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{len(self.parts):05d}.parquet"
        pq.write_table(pa.table(arrays, names=[*_META, *self.columns]), path)
        self.parts.append(path)


@dataclass
class ChangeBatch:
    """What one run read from the slot."""

    tables: dict[str, TableChanges]
    end_lsn: int
    """The position to store once these changes are loaded (the slot is advanced there next run)."""


def read_changes(
    url: sa.URL,
    spec: SourceSpec,
    tables: dict[str, list[SourceColumn]],
    stored_lsn: int | None,
    upto_lsn: int,
    staging: Path,
) -> ChangeBatch:
    """Advance the slot to ``stored_lsn`` (what raw holds), then peek the changes of ``tables``
    (table -> columns) committed below ``upto_lsn`` into parquet parts under ``staging``."""
    where = f"source {spec.name!r}"
    batch = ChangeBatch(
        {
            name: TableChanges(spec.table(name), [c.name for c in columns], staging / name)
            for name, columns in tables.items()
        },
        end_lsn=max(upto_lsn, stored_lsn or 0),
    )
    with connect(url) as conn:
        conn.autocommit = True
        money = _money_parser(conn)
        for name, columns in tables.items():
            try:
                batch.tables[name].convert = {
                    i: f for i, c in enumerate(columns) if (f := log_text_converter(c, money)) is not None
                }
            except CdcError as exc:
                raise CdcError(f"{where}, table {name!r}: {exc}") from None
        slot = _slot(conn, spec)
        if slot is None:
            raise CdcError(f"{where}: replication slot {spec.cdc_slot!r} is gone; run `dusk cdc setup {spec.name}`")
        confirmed = pgoutput.lsn_int(slot[1])
        if stored_lsn is not None and confirmed > stored_lsn:
            raise CdcError(
                f"{where}: replication slot {spec.cdc_slot!r} was advanced to {slot[1]} outside dusk, past "
                f"{pgoutput.lsn_text(stored_lsn)} that raw holds: the changes in between are lost to raw. "
                f"Drop and set up the slot again (`dusk cdc drop/setup {spec.name}`) and reload the CDC tables."
            )
        if stored_lsn is not None and stored_lsn > confirmed:
            conn.execute(
                "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (spec.cdc_slot, pgoutput.lsn_text(stored_lsn))
            )
        if not tables:
            return batch
        conn.autocommit = False
        with conn.transaction(), conn.cursor(name="dusk_cdc") as cur:
            cur.itersize = 10_000
            cur.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL, "
                "'proto_version', '1', 'publication_names', %s)",
                (spec.cdc_slot, pgoutput.lsn_text(upto_lsn), spec.cdc_publication),
                binary=True,  # bytea without its hex text form
            )
            _decode_into(batch, (bytes(row[0]) for row in cur))
    for changes in batch.tables.values():
        changes.flush()
    return batch


_NUMBERS = ("smallint", "integer", "bigint", "numeric", "real", "double precision", "decimal")


def log_text_converter(column: SourceColumn, money: Callable[[str], str]) -> Callable[[str], str] | None:
    """How the log's text of ``column`` becomes what the snapshot reads at the source, or None
    when it already is: an array as ``to_json`` writes it, money as its numeric."""
    if column.source_type == "money":
        return money
    if not column.source_type.endswith("[]") or column.raw_type != "JSON":
        return None
    element = column.source_type.removesuffix("[]").split("(")[0].strip()
    if element.startswith(_NUMBERS):
        return lambda text: _array_json(text, _number_json)
    if element == "boolean":
        return lambda text: _array_json(text, lambda v: "true" if v == "t" else "false")
    if element.startswith(("text", "character", "varchar", "char", "uuid", "citext", "name")):
        return lambda text: _array_json(text, lambda v: json.dumps(v, ensure_ascii=False))
    raise CdcError(
        f"column {column.name!r} ({column.source_type}): an array of this type cannot yet be read from the log "
        f"as the snapshot reads it (to_json). Declare columns: {{{column.name}: text}} for the table in "
        "sources.yml to land the server's exact array text."
    )


def _number_json(value: str) -> str:
    """A numeric element as to_json writes it: NaN and infinities as strings."""
    return f'"{value}"' if value in ("NaN", "Infinity", "-Infinity") else value


def _array_json(text: str, element: Callable[[str], str]) -> str:
    """PostgreSQL's array text (``{1,NULL,"a b"}``, nested braces for more dimensions, quoted
    elements with backslash escapes) as JSON in to_json's form (no spaces)."""
    if text.startswith("["):  # explicit bounds, [1:2]={...}: the elements are what counts
        text = text[text.index("=") + 1 :]
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{":
            out.append("[")
            i += 1
        elif ch == "}":
            out.append("]")
            i += 1
        elif ch == ",":
            out.append(",")
            i += 1
        elif ch == '"':
            i += 1
            quoted = []
            while text[i] != '"':
                if text[i] == "\\":
                    i += 1
                quoted.append(text[i])
                i += 1
            i += 1
            out.append(element("".join(quoted)))  # a quoted "NULL" is the text NULL
        else:
            j = i
            while text[j] not in ",}":
                j += 1
            bare = text[i:j].strip()
            out.append("null" if bare.upper() == "NULL" else element(bare))
            i = j
    return "".join(out)


def _money_parser(conn: psycopg.Connection[Any]) -> Callable[[str], str]:
    """money's text follows the server's lc_monetary (``-$12,345.67``, ``-12.345,67 €``): learn its
    decimal mark from the text of a known value, and read a value as its plain numeric."""
    row = conn.execute("SELECT (-12345.67)::money::text").fetchone()
    sample = str(row[0]) if row else "-12345.67"
    at = sample.rfind("67")
    mark = sample[at - 1] if at > 0 and not sample[at - 1].isdigit() else None

    def parse(text: str) -> str:
        negative = "-" in text or "(" in text
        kept = "".join(ch for ch in text if ch.isdigit() or ch == mark)
        whole, _, fraction = kept.partition(mark) if mark else (kept, "", "")
        return ("-" if negative else "") + (whole or "0") + (f".{fraction}" if fraction else "")

    return parse


def _decode_into(batch: ChangeBatch, messages: Iterator[bytes]) -> None:
    relations: dict[int, tuple[pgoutput.Relation, TableChanges | None, tuple[int, ...], list[int]]] = {}
    seq, lsn, ts, ts_us = 0, 0, None, 0
    unknown = pgoutput.UNCHANGED
    for data in messages:
        row = pgoutput.new_tuple(data)
        if row is not None:  # an insert or an update of a row's values: decoded in bulk at the flush
            assert ts is not None, "a change outside a transaction"
            relation, changes, index, _ = relations[row[1]]
            if changes is not None:
                seq += 1
                changes.add_tuple(seq, row[0], lsn, ts_us, data, row[2], index, len(relation.columns))
            continue
        message = pgoutput.decode(data)
        if isinstance(message, pgoutput.Begin):
            lsn, ts = message.final_lsn, message.commit_time
            ts_us = (ts - _UNIX_EPOCH) // _MICROSECOND
        elif isinstance(message, pgoutput.Commit):
            batch.end_lsn = max(batch.end_lsn, message.end_lsn)
        elif isinstance(message, pgoutput.Relation):
            relations[message.relation_id] = _route(batch, message)
        elif message is None:
            continue
        elif isinstance(message, pgoutput.Truncate):
            assert ts is not None, "a change outside a transaction"
            for relation_id in message.relation_ids:
                changes = relations[relation_id][1] if relation_id in relations else None
                if changes is not None:
                    seq += 1
                    changes.truncates.append((seq, lsn, ts))
        else:
            assert ts is not None, "a change outside a transaction"
            _, changes, index, key_index = relations[message.relation_id]
            if changes is None:
                continue
            # every insert, and every update without an old key or row, went to new_tuple above
            if isinstance(message, pgoutput.Update):
                assert message.old is not None, "an update without its old key or row reached the slow path"
                new = [message.new[i] if i >= 0 else unknown for i in index]
                old = _old_values(message.old, index, key_index if message.old_is_key else None)
                key = [changes.columns.index(k) for k in changes.spec.key_columns]
                if [old[i] for i in key] != [new[i] for i in key]:
                    # the key changed: the old key is deleted, and the new row ('M', moved)
                    # takes the values the stream leaves out from the old key's row
                    seq += 1
                    changes.add(seq, "D", lsn, ts, old)
                    seq += 1
                    changes.add(seq, "M", lsn, ts, new)
                    continue
                seq += 1
                changes.add(seq, "U", lsn, ts, new)
            elif isinstance(message, pgoutput.Delete):
                seq += 1
                old = _old_values(message.old, index, key_index if message.old_is_key else None)
                changes.add(seq, "D", lsn, ts, old)


def _route(
    batch: ChangeBatch, relation: pgoutput.Relation
) -> tuple[pgoutput.Relation, TableChanges | None, tuple[int, ...], list[int]]:
    """Where a relation's changes go: its table (None if not captured), and for each of the
    table's columns its position in the relation's tuples (-1: not sent, e.g. added since)."""
    changes = batch.tables.get(relation.name) if relation.namespace == "public" else None
    if changes is None:
        return relation, None, (), []
    positions = {name: i for i, name in enumerate(relation.columns)}
    index = tuple(positions.get(c, -1) for c in changes.columns)
    keys = [positions[c] for c in relation.key_columns]
    return relation, changes, index, keys


def _old_values(old: pgoutput.Tuple, index: tuple[int, ...], key_index: list[int] | None) -> list[Any]:
    """An old tuple's values in the table's column order. With a key-only tuple ('K'), the other
    columns are unknown, not NULL."""
    return [old[i] if i >= 0 and (key_index is None or i in key_index) else pgoutput.UNCHANGED for i in index]
