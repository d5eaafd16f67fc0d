"""pgoutput's tuples decoded in bulk (numpy, column by column) equal the value-by-value decoder's,
and a table's changes written through either path make the same parquet rows."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
import pytest

from ingestion.database import pgoutput
from ingestion.database.cdc import slot

TEXTS = ["", "a", "0.04", "1996-03-13", "egular courts above the", "zürich ✓ 東京", "x" * 300, "NULL", "'\"\\{}"]


def _tuple(values: list[Any]) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is pgoutput.UNCHANGED:
            out += b"u"
        else:
            encoded = v.encode()
            out += b"t" + struct.pack("!i", len(encoded)) + encoded
    return out


def _random_row(rng: random.Random, count: int) -> list[Any]:
    return [rng.choice([*TEXTS, None, pgoutput.UNCHANGED, str(rng.random())]) for _ in range(count)]


def _insert(relation_id: int, values: list[Any]) -> bytes:
    return b"I" + struct.pack("!I", relation_id) + b"N" + _tuple(values)


def _expected(values: list[Any]) -> tuple[list[Any], list[bool]]:
    return [v if isinstance(v, str) else None for v in values], [v is pgoutput.UNCHANGED for v in values]


@pytest.mark.parametrize("gather", [pgoutput._GATHER_BYTES, 0])  # numpy's gather, and value by value
def test_bulk_decoding_equals_the_value_by_value_decoder(gather: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgoutput, "_GATHER_BYTES", gather)
    rng = random.Random(7)
    count = 6
    rows = [_random_row(rng, count) for _ in range(500)]
    datas = [_insert(16384, row) for row in rows]
    assert all(pgoutput.new_tuple(d) == ("I", 16384, 6) for d in datas)
    arrays, unchanged = pgoutput.tuples(datas, [6] * len(datas), count)
    for r, data in enumerate(datas):
        one = pgoutput.decode(data)
        assert isinstance(one, pgoutput.Insert)
        values, masks = _expected(one.new)
        assert [a[r].as_py() for a in arrays] == values
        assert unchanged[r].tolist() == masks
    empty, none = pgoutput.tuples([], [], count)
    assert [len(a) for a in empty] == [0] * count and none.shape == (0, count)


def test_only_inserts_and_plain_updates_are_left_to_the_bulk_decoder() -> None:
    update = b"U" + struct.pack("!I", 9) + b"N" + _tuple(["1"])
    assert pgoutput.new_tuple(update) == ("U", 9, 6)
    keyed = b"U" + struct.pack("!I", 9) + b"K" + _tuple(["1"]) + b"N" + _tuple(["2"])
    assert pgoutput.new_tuple(keyed) is None  # the key changed: decoded value by value
    assert pgoutput.new_tuple(b"D" + struct.pack("!I", 9) + b"K" + _tuple(["1"])) is None
    assert pgoutput.new_tuple(b"B" + bytes(20)) is None


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        (_insert(1, ["a", "b"]), 3, "without the 3 values"),
        (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 1) + b"b" + struct.pack("!i", 1) + b"x", 1, "'b'"),
        (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 1) + b"t" + struct.pack("!i", 50) + b"x", 1, "past"),
        (b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", 1) + b"t" + struct.pack("!i", 1) + b"\xff", 1, "UTF-8"),
    ],
)
def test_a_tuple_the_bulk_decoder_cannot_read_stops_it(data: bytes, count: int, message: str) -> None:
    with pytest.raises(pgoutput.DecodeError, match=message):
        pgoutput.tuples([_insert(1, ["ok"] * count), data], [6, 6], count)


def _rows(changes: slot.TableChanges) -> list[dict[str, Any]]:
    changes.flush()
    rows = [r for part in changes.parts for r in pq.read_table(part).to_pylist()]
    return sorted(rows, key=lambda r: r["_seq"])


def test_changes_written_in_bulk_equal_those_written_value_by_value(tmp_path: Path) -> None:
    """Both paths of a table's changes: a relation sent before a column was added (-1: unknown,
    not NULL), unchanged TOASTed values, a converted column, and parts flushed midway."""
    rng = random.Random(11)
    spec: Any = SimpleNamespace(name="items", key_columns=("id",))
    columns = ["id", "tags", "note", "added"]
    convert = {1: lambda text: text.upper()}
    layouts = [((0, 1, 2, -1), 3), ((0, 1, 2, 3), 4)]  # before and after `added` was added
    bulk = slot.TableChanges(spec, columns, tmp_path / "bulk", convert=convert)
    each = slot.TableChanges(spec, columns, tmp_path / "each", convert=convert)
    ts = datetime(2026, 12, 5, 7, 0, 0, 123456, tzinfo=UTC)
    ts_us = int(ts.timestamp() * 1_000_000)
    for seq in range(1, 301):
        index, count = layouts[seq > 150]
        values = _random_row(rng, count)
        values[0] = str(seq)
        data = _insert(5, values)
        bulk.add_tuple(seq, "I" if seq % 3 else "U", 40 + seq, ts_us, data, 6, index, count)
        each.add(
            seq, "I" if seq % 3 else "U", 40 + seq, ts, [values[i] if i >= 0 else pgoutput.UNCHANGED for i in index]
        )
        if seq == 100:
            bulk.flush()
    assert bulk.count == each.count == 300
    assert _rows(bulk) == _rows(each)
    assert len(bulk.parts) == 3  # the flush at 100, then one part per layout

    bad = _insert(5, ["1", "a", "b"])[:-1]  # cut short: its last value runs past the message
    bulk.add_tuple(301, "I", 341, ts_us, bad, 6, (0, 1, 2, -1), 3)
    with pytest.raises(pgoutput.DecodeError, match="table 'items': a tuple value runs past"):
        bulk.flush()
