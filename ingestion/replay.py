"""Dead letters fed back (``dusk replay``): the file rows and stream messages a night kept in
``raw_<source>._quarantine`` because they did not fit their declaration, checked again after a
rule fix (a wider type, a new column in ``sources.yml``) or a data fix (a corrected record from
``--from``), through the same checks a night uses.

Each dead letter ends with one outcome, written to ``raw_<source>._replays`` in the same load as
the rows it let through (both or neither):

- ``replayed``: it fits now; its row is in raw, with its file and line (or stream sequence), and
  the next night builds it into staging and the marts;
- ``still bad``: it still does not fit; the reason is tonight's, and it stays pending;
- ``superseded``: raw already holds a newer row for its key (a later file or load, a later stream
  message): loading the old one would bring back a stale value, so it is not loaded.

A dead letter is pending until it is replayed or superseded. Database and API sources keep no dead
letters: a value that does not fit stops their table, which is read again the next night.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa

from ingestion.declaration import SourceSpec, TableSpec
from ingestion.rows import json_columns, json_record, typed_rows, undeclared, with_load_id
from ingestion.run import Target, make_pipeline, run_pipeline

QUARANTINE = "_quarantine"
REPLAYS = "_replays"
REPLAY_KINDS = ("files", "stream")
REPLAYED, STILL_BAD, SUPERSEDED = "replayed", "still bad", "superseded"
_KEY_CHUNK = 200
"""Keys looked up in raw per query (a query per dead letter would be slow on a server engine)."""


class ReplayRefused(RuntimeError):
    """The source keeps no dead letters, or a correction cannot be used; the message says why."""


@dataclass
class DeadLetter:
    """One quarantined record, as a night kept it."""

    id: str
    """``<table>:<file>:<sha256 prefix>:<line>`` (files) or ``<table>:<stream sequence>`` (streams)."""
    table: str
    reason: str
    record: str
    load_id: str
    file: str | None = None
    line: int | None = None
    seq: int | None = None
    corrected: bool = False
    sha: str | None = None

    def order(self) -> tuple[Any, ...]:
        """Its place among the source's rows: the later wins, as in a night."""
        if self.seq is not None:
            return (self.seq,)
        return (float(self.load_id), self.file or "", self.line or 0)


@dataclass
class ReplayResult:
    """What one replay did."""

    replay_id: str
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(table, outcome) -> dead letters."""
    still_bad: list[tuple[str, str]] = field(default_factory=list)
    """(dead letter id, tonight's reason)."""


def pending(con: Any, spec: SourceSpec, present: Collection[str], tables: list[str] | None = None) -> list[DeadLetter]:
    """The source's dead letters not yet replayed or superseded (of ``tables``; default all), read
    on ``con``; ``present`` names the tables the source's raw dataset holds."""
    _check(spec, tables)
    if QUARANTINE not in present:
        return []
    done: set[str] = set()
    if REPLAYS in present:
        done = {
            str(row[0])
            for row in con.execute(
                f'select dead_letter from "{spec.dataset}"."{REPLAYS}" where outcome in (?, ?)', [REPLAYED, SUPERSEDED]
            ).fetchall()
        }
    letters = [
        letter for letter in _kept(con, spec) if letter.id not in done and not (tables and letter.table not in tables)
    ]
    return sorted(letters, key=lambda d: (d.table, d.order()))


def _kept(con: Any, spec: SourceSpec) -> list[DeadLetter]:
    """Every dead letter ``_quarantine`` holds, once each (the latest copy of one kept twice)."""
    origin = "file, sha256, line" if spec.kind == "files" else "stream_seq"
    query = f'select source_table, reason, record, _dlt_load_id, {origin} from "{spec.dataset}"."{QUARANTINE}"'
    letters: dict[str, DeadLetter] = {}
    for row in con.execute(query).fetchall():
        if spec.kind == "files":
            table, reason, record, load_id, file, sha, line = row
            letter = DeadLetter(
                f"{table}:{file}:{str(sha)[:12]}:{line}", table, reason, record, load_id, file, int(line), sha=sha
            )
        else:
            table, reason, record, load_id, seq = row
            letter = DeadLetter(f"{table}:{seq}", table, reason, record, load_id, seq=int(seq))
        known = letters.get(letter.id)
        if known is None or float(letter.load_id) > float(known.load_id):
            letters[letter.id] = letter
    return list(letters.values())


def erase(con: Any, spec: SourceSpec, present: Collection[str], table: TableSpec, keys: list[tuple[Any, ...]]) -> int:
    """Delete the dead letters of ``table`` whose record carries one of ``keys`` (values of its
    primary key, compared as text), and their replay outcomes (whose reasons may quote a value):
    ``dusk erase``. The number of dead letters deleted."""
    if spec.kind not in REPLAY_KINDS or QUARANTINE not in present or not table.key_columns:
        return 0
    wanted = {tuple(str(v) for v in key) for key in keys}
    found = []
    for letter in _kept(con, spec):
        record = json_record(letter.record) if letter.table == table.name else None
        if isinstance(record, dict) and tuple(str(record.get(k)) for k in table.key_columns) in wanted:
            found.append(letter)
    quarantine, replays = f'"{spec.dataset}"."{QUARANTINE}"', f'"{spec.dataset}"."{REPLAYS}"'
    for letter in found:
        if letter.seq is not None:
            con.execute(
                f"delete from {quarantine} where source_table = ? and stream_seq = ?", [letter.table, letter.seq]
            )
        else:
            con.execute(
                f"delete from {quarantine} where source_table = ? and file = ? and sha256 = ? and line = ?",
                [letter.table, letter.file, letter.sha, letter.line],
            )
        if REPLAYS in present:
            con.execute(f"delete from {replays} where dead_letter = ?", [letter.id])
    return len(found)


def export(letters: list[DeadLetter], path: Path) -> None:
    """The dead letters as JSON lines to correct and hand back with ``--from``: ``record`` is the
    kept record (an object where it parses, else its text), ``reason`` why it was kept."""
    with path.open("w", encoding="utf-8") as out:
        for letter in letters:
            parsed = json_record(letter.record)
            record = json.loads(letter.record) if isinstance(parsed, dict) else letter.record
            line = {"dead_letter": letter.id, "table": letter.table, "reason": letter.reason, "record": record}
            out.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")


def corrected(letters: list[DeadLetter], path: Path) -> list[DeadLetter]:
    """The pending dead letters named in ``path`` (an export, corrected by hand), each with its
    corrected record. A line naming no pending dead letter is refused, naming its line."""
    by_id = {letter.id: letter for letter in letters}
    chosen: list[DeadLetter] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            letter = by_id[line["dead_letter"]]
            record = line["record"]
        except json.JSONDecodeError as exc:
            raise ReplayRefused(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        except (KeyError, TypeError):
            raise ReplayRefused(
                f"{path}, line {number}: names no pending dead letter (expected a line of `dusk replay --export`, "
                "with dead_letter and record; a replayed or superseded one is not pending)"
            ) from None
        text_record = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
        chosen.append(DeadLetter(**{**letter.__dict__, "record": text_record, "corrected": True}))
    return chosen


@dataclass
class Plan:
    """A replay worked out: the rows raw receives and each dead letter's outcome."""

    result: ReplayResult
    rows: dict[str, pa.Table] = field(default_factory=dict)
    marks: list[dict[str, Any]] = field(default_factory=list)


def plan(spec: SourceSpec, target: Target, con: Any, letters: list[DeadLetter], replay_id: str) -> Plan:
    """Check ``letters`` against the declaration as a night would, and look up (on ``con``) what
    raw holds for their keys: the rows to load and every dead letter's outcome."""
    out = Plan(ReplayResult(replay_id))
    now = datetime.now(UTC)

    def mark(letter: DeadLetter, outcome: str, reason: str | None = None) -> None:
        out.result.outcomes[(letter.table, outcome)] += 1
        if outcome == STILL_BAD:
            out.result.still_bad.append((letter.id, reason or ""))
        out.marks.append(
            {
                "dead_letter": letter.id,
                "source_table": letter.table,
                "outcome": outcome,
                "reason": reason,
                "corrected": letter.corrected,
                "replay_id": replay_id,
                "replayed_at": now,
            }
        )

    duck = duckdb.connect()
    try:
        duck.execute("SET TimeZone = 'UTC'")
        for table in spec.tables:
            mine = [letter for letter in letters if letter.table == table.name]
            if not mine:
                continue
            records = []
            for index, letter in enumerate(mine):
                record = json_record(letter.record, json_columns(table))
                if isinstance(record, str):
                    mark(
                        letter, STILL_BAD, f"the kept text is {record}: correct it (dusk replay --export, then --from)"
                    )
                else:
                    records.append((index, record))
            good, checked = typed_rows(
                duck, table, records, quarantine_duplicates=False, extra=undeclared(table, records)
            )
            for index, reason, _ in checked:
                mark(mine[index], STILL_BAD, reason)
            fits = [mine[i] for i in good.column("_line").to_pylist()]
            newer = _newer_in_raw(spec, target, con, table, good, fits)
            keep = []
            for row, letter in enumerate(fits):
                if newer[row]:
                    mark(letter, SUPERSEDED, newer[row])
                else:
                    mark(letter, REPLAYED)
                    keep.append(row)
            if keep:
                out.rows[table.name] = _with_origin(spec, target, good.take(keep), [fits[i] for i in keep])
    finally:
        duck.close()
    return out


def _newer_in_raw(
    spec: SourceSpec, target: Target, con: Any, table: TableSpec, good: pa.Table, fits: list[DeadLetter]
) -> list[str | None]:
    """Per fitting dead letter, why raw's row (or another dead letter) is newer than it; None
    where it is not and the dead letter can be loaded."""
    why: list[str | None] = [None] * len(fits)
    if table.write_disposition == "replace":
        # a full-snapshot table holds only its last load: an older load's row would come back stale
        query = f'select max(_dlt_load_id) from "{spec.dataset}"."{table.name}"'
        (last_load,) = con.execute(query).fetchone() or (None,)
        for row, letter in enumerate(fits):
            if last_load is not None and float(letter.load_id) < float(last_load):
                why[row] = f"the table was replaced by load {last_load} since (write_disposition: replace)"
        return why
    if not table.key_columns or table.write_disposition != "merge":
        return why
    keys = [tuple(k) for k in zip(*(good.column(n).to_pylist() for n in table.key_columns), strict=True)]
    latest: dict[tuple[Any, ...], int] = {}
    for row, key in enumerate(keys):
        if key in latest and fits[latest[key]].order() > fits[row].order():
            why[row] = "a later dead letter of this replay has the same key"
            continue
        if key in latest:
            why[latest[key]] = "a later dead letter of this replay has the same key"
        latest[key] = row
    origin = ["_stream_seq"] if spec.kind == "stream" else ["_dlt_load_id", target.file_column, "_line"]
    columns = ", ".join(f'"{c}"' for c in (*table.key_columns, *origin))
    one = "(" + " and ".join(f'"{k}" = ?' for k in table.key_columns) + ")"
    wanted = list(latest)
    held: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for start in range(0, len(wanted), _KEY_CHUNK):
        chunk = wanted[start : start + _KEY_CHUNK]
        query = f'select {columns} from "{spec.dataset}"."{table.name}" where ' + " or ".join([one] * len(chunk))
        for found in con.execute(query, [v for key in chunk for v in key]).fetchall():
            key, at = tuple(found[: len(table.key_columns)]), found[len(table.key_columns) :]
            held[key] = (int(at[0]),) if spec.kind == "stream" else (float(at[0]), at[1] or "", int(at[2] or 0))
    for key, row in latest.items():
        if key in held and held[key] > fits[row].order():
            where = "message" if spec.kind == "stream" else "row (a later file or load)"
            why[row] = f"raw holds a newer {where} for {table.key_text(key)}"
    return why


def _with_origin(spec: SourceSpec, target: Target, good: pa.Table, letters: list[DeadLetter]) -> pa.Table:
    """The rows with the columns a night gives them: their file and line, or stream sequence."""
    good = good.drop_columns(["_line"])
    if spec.kind == "stream":
        return good.append_column("_stream_seq", pa.array([d.seq for d in letters], pa.int64()))
    good = good.append_column("_line", pa.array([d.line for d in letters], pa.int64()))
    good = good.append_column(target.file_column, pa.array([d.file for d in letters], pa.string()))
    return good.append_column("_file_order", pa.array([0] * good.num_rows, pa.int64()))


def _reader(rows: pa.Table) -> Callable[[], Iterator[pa.Table]]:
    def read() -> Iterator[pa.Table]:
        yield with_load_id(rows)

    return read


def load(spec: SourceSpec, target: Target, planned: Plan) -> None:
    """Write the planned rows and every outcome to raw in one load: both land, or neither."""
    from ingestion.files.source import table_resource as file_table
    from ingestion.stream.source import table_resource as stream_table

    @dlt.source(name=spec.name, max_table_nesting=0)
    def source() -> Iterator[Any]:
        for table in spec.tables:
            rows = planned.rows.get(table.name)
            if rows is None:
                continue
            if spec.kind == "stream":
                yield stream_table(table, rows)
                continue
            resource = file_table(table, _reader(rows), target.file_column)
            if not (table.key_columns and table.write_disposition == "merge"):
                # a night replaces a file's rows (no key) or the table (replace): these are added
                resource.apply_hints(write_disposition="append")
            yield resource
        yield dlt.resource(planned.marks, name=REPLAYS, write_disposition="append")

    run_pipeline(make_pipeline(spec, target), target, source())


def _check(spec: SourceSpec, tables: list[str] | None) -> None:
    if spec.kind not in REPLAY_KINDS:
        raise ReplayRefused(
            f"source {spec.name!r} is a {spec.kind} source, which keeps no dead letters: a value that does not fit "
            "stops its table, which is read again by the next run once the source or sources.yml is fixed; rows "
            f"that break a rule wait in quarantine_{spec.name} and are checked again by every night"
        )
    declared = [t.name for t in spec.tables]
    unknown = sorted(set(tables or ()) - set(declared))
    if unknown:
        has = ", ".join(declared)
        raise ReplayRefused(f"source {spec.name!r} declares no table {', '.join(unknown)} (it has {has})")
