"""Stream sources against the real NATS JetStream on 127.0.0.1:4222 (a stream of its own per test,
deleted after): micro-batches acknowledged only after the load commits, poison messages in
quarantine, redelivery after a crash or a failed load without duplicates, and an unreachable
server skipped (demo) or failed (otherwise) with the reason."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from dusk.settings import Settings
from dusk.warehouse import open_warehouse, table_names
from ingestion import replay, stream
from ingestion.declaration import SourceSpec
from ingestion.dlt_settings import configure_dlt
from ingestion.result import SourceResult
from tests.helpers import ingest, kill_ingest_after, raw, sources

NATS_URL = "nats://127.0.0.1:4222"

SOURCES_YML = """
sources:
  web:
    kind: stream
    description: web events
    optional: {optional}
    stream:
      servers: {servers}
      stream: {stream}
      durable: {durable}
      batch_size: 200
      ack_wait: 1.5
      fetch_timeout: 0.5
    tables:
      web_events:
        primary_key: event_id
        subject: {subject}
        columns:
          event_id: text
          event_type: text
          customer_id: integer
          occurred_at: timestamp
"""


async def _admin(coro_fn: object) -> object:
    nc = await stream.connect(NATS_URL)
    try:
        return await coro_fn(nc.jetstream())  # type: ignore[operator]
    finally:
        await nc.close()


def admin(fn: object) -> object:
    return asyncio.run(_admin(fn))


@pytest.fixture
def web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A JetStream stream and subject of this test's own, and sources.yml pointing at them."""
    try:
        admin(lambda js: js.account_info())
    except Exception as exc:
        reason = f"NATS JetStream is not reachable at {NATS_URL}: {exc!r}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    configure_dlt()
    tag = uuid.uuid4().hex[:10]
    names = {"stream": f"DUSK_TEST_{tag}", "subject": f"dusk.test.{tag}.events", "durable": f"dusk_test_{tag}"}
    admin(lambda js: js.add_stream(name=names["stream"], subjects=[names["subject"]]))
    write(tmp_path, names)
    monkeypatch.setenv("DUSK_SOURCES_FILE", str(tmp_path / "sources.yml"))
    yield names
    admin(lambda js: js.delete_stream(names["stream"]))


def write(tmp_path: Path, names: dict[str, str], servers: str = NATS_URL, optional: bool = False) -> None:
    text = SOURCES_YML.format(servers=servers, optional=str(optional).lower(), **names)
    (tmp_path / "sources.yml").write_text(text)


def publish(subject: str, payloads: list[bytes]) -> None:
    async def go(js: object) -> None:
        for payload in payloads:
            await js.publish(subject, payload)  # type: ignore[attr-defined]

    admin(go)


def event(i: int, **extra: object) -> bytes:
    body = {
        "event_id": f"e{i}",
        "event_type": "page_view",
        "customer_id": i % 7,
        "occurred_at": f"2026-01-01T00:00:{i % 60:02d}Z",
    }
    return json.dumps({**body, **extra}).encode()


def consumer_state(names: dict[str, str]) -> tuple[int, int]:
    """(messages not yet delivered, delivered but not acknowledged) of the durable consumer."""

    async def go(js: object) -> tuple[int, int]:
        info = await js.consumer_info(names["stream"], f"{names['durable']}_web_events")  # type: ignore[attr-defined]
        return info.num_pending, info.num_ack_pending

    return admin(go)  # type: ignore[return-value]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)


def spec() -> SourceSpec:
    return sources()["web"]


def counts(result: SourceResult) -> tuple[int, int]:
    t = result.tables[0]
    return t.extracted, t.quarantined


@pytest.mark.badinput
def test_a_batch_loads_then_is_acknowledged_and_poison_goes_to_quarantine(
    web: dict[str, str], settings: Settings
) -> None:
    publish(web["subject"], [event(i) for i in range(250)])
    publish(
        web["subject"],
        [event(5), b"{not json", json.dumps({"event_type": "click"}).encode(), event(900, customer_id="x")],
    )
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert counts(result) == (250, 3)  # event 5 twice (a producer retry) is one row, and said so
    assert result.notes == [
        "web_events: 1 message(s) repeated the key of another message of this batch (a producer's retry or an "
        "update); the last one by stream sequence was kept"
    ]
    assert raw(settings, "select count(*), count(distinct event_id) from raw_web.web_events") == [(250, 250)]
    assert raw(settings, "select stream_seq, reason from raw_web._quarantine order by 1") == [
        (252, "not valid JSON (Expecting property name enclosed in double quotes)"),
        (253, "primary key column event_id is empty"),
        (254, 'column customer_id: "x" is not a integer'),
    ]
    assert consumer_state(web) == (0, 0)  # everything, poison included, acknowledged
    quiet = ingest(spec(), settings)
    assert quiet.ok and counts(quiet) == (0, 0)


def test_a_crash_between_load_and_ack_redelivers_without_duplicates(
    web: dict[str, str], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(web["subject"], [event(i) for i in range(100)])
    with monkeypatch.context() as m:
        m.setattr(stream.StreamReader, "ack", lambda self, batch: None)  # dies right after the commit
        assert ingest(spec(), settings).ok
    assert consumer_state(web) == (0, 100)  # loaded, never acknowledged
    publish(web["subject"], [event(i) for i in range(100, 110)])
    # no waiting for ack_wait: the next run delivers what the dead one fetched again at once
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert counts(result)[0] == 110
    assert raw(settings, "select count(*), count(distinct event_id) from raw_web.web_events") == [(110, 110)]
    assert consumer_state(web) == (0, 0)


def test_a_failed_load_is_negatively_acknowledged_and_loaded_next_run(
    web: dict[str, str], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(web["subject"], [event(i) for i in range(20)])

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the warehouse is locked")

    with monkeypatch.context() as m:
        m.setattr(importlib.import_module("ingestion.stream.ingest"), "stream_source", broken)
        failed = ingest(spec(), settings)
    assert not failed.ok and "the warehouse is locked" in (failed.error or "")
    result = ingest(spec(), settings)  # nak'd: delivered again at once, no ack_wait
    assert result.ok, result.error
    assert counts(result) == (20, 0)
    assert consumer_state(web) == (0, 0)


@pytest.mark.parametrize("delay", ["extract", "load"])
def test_a_killed_consumer_restarted_loses_and_repeats_nothing(
    web: dict[str, str], settings: Settings, delay: float | str
) -> None:
    publish(web["subject"], [event(i) for i in range(3000)])
    kill_ingest_after(settings, "web", delay)
    result = ingest(spec(), settings)  # what the killed consumer fetched comes again at once
    assert result.ok, result.error
    assert raw(settings, "select count(*), count(distinct event_id) from raw_web.web_events") == [(3000, 3000)]
    assert consumer_state(web) == (0, 0)


def test_an_unreachable_server_is_skipped_for_an_optional_source_and_fails_otherwise(
    web: dict[str, str], settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, web, servers="nats://dusk:s3cret@127.0.0.1:1", optional=True)
    skipped = ingest(spec(), settings)
    assert skipped.ok
    assert "source 'web': NATS at nats://127.0.0.1:1 is not reachable" in (skipped.skipped or "")
    write(tmp_path, web, optional=False)
    # the server from the environment (it may carry credentials) wins over sources.yml
    monkeypatch.setenv("SOURCES__WEB__SERVERS", "nats://dusk:s3cret@127.0.0.1:1")
    failed = ingest(spec(), settings)
    assert not failed.ok
    assert "NATS at nats://127.0.0.1:1 is not reachable" in (failed.error or "")
    assert "s3cret" not in (failed.error or "")


@pytest.mark.badinput
def test_an_undeclared_field_reaches_raw_as_text_and_is_named(web: dict[str, str], settings: Settings) -> None:
    publish(web["subject"], [event(1), event(2, referrer="https://example.com", cart={"items": [1, 2]})])
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert raw(settings, "select event_id, referrer, cart from raw_web.web_events order by 1") == [
        ("e1", None, None),
        ("e2", "https://example.com", '{"items": [1, 2]}'),
    ]
    assert result.notes == [
        f"web_events: column(s) ['referrer', 'cart'] of subject {web['subject']} are not declared in sources.yml: "
        "they landed in raw as text; declare them under columns: to give them a type"
    ]
    publish(web["subject"], [json.dumps({"event_id": "e3", "event_type": "click"}).encode()])
    lacking = ingest(spec(), settings)
    assert lacking.ok, lacking.error
    assert lacking.notes == [
        f"web_events: declared column(s) ['customer_id', 'occurred_at'] are in no message of this batch on "
        f"subject {web['subject']}: loaded as NULL"
    ]


def test_fields_without_declared_columns_are_inferred_pinned_and_evolved(
    tmp_path: Path, web: dict[str, str], settings: Settings
) -> None:
    """A stream table declared without columns: the first batch types them (a JSON fraction as an
    exact decimal), raw pins them, a later field is added, a later misfit is quarantined."""
    yml = (tmp_path / "sources.yml").read_text()
    (tmp_path / "sources.yml").write_text(yml[: yml.index("        columns:")])
    # the amount as a producer writes it: a JSON number with 19 significant digits
    publish(web["subject"], [event(1)[:-1] + b', "amount": 12345678901234567.89}', event(2, amount=0.5)])
    first = ingest(spec(), settings)
    assert first.ok, first.error
    assert raw(settings, "select event_id, customer_id, amount, occurred_at from raw_web.web_events order by 1")[0][
        :3
    ] == ("e1", 1, Decimal("12345678901234567.89"))
    assert any("(first load)" in n and "amount decimal(19,2)" in n for n in first.notes), first.notes
    publish(web["subject"], [event(3, amount=1, coupon="X1"), event(4, amount="n/a")])
    second = ingest(spec(), settings)
    assert second.ok, second.error
    assert raw(settings, "select event_id, amount, coupon from raw_web.web_events order by 1") == [
        ("e1", Decimal("12345678901234567.89"), None),
        ("e2", Decimal("0.50"), None),
        ("e3", Decimal("1.00"), "X1"),
    ]
    assert raw(settings, "select reason from raw_web._quarantine") == [('column amount: "n/a" is not a decimal(19,2)',)]


@pytest.mark.badinput
def test_poison_messages_are_replayed_once_corrected_and_never_over_a_newer_message(
    tmp_path: Path, web: dict[str, str], settings: Settings
) -> None:
    """`dusk replay`'s steps on a stream: corrected poison messages load with their own stream
    sequence; one whose key a later message already brought is superseded, not loaded over it;
    an uncorrected one stays pending, still bad."""
    publish(web["subject"], [event(1), b"{not json", event(2, customer_id="x"), event(3, customer_id="y"), event(3)])
    assert ingest(spec(), settings).ok
    wh = open_warehouse(settings)
    with wh.connect() as con:
        letters = replay.pending(con, spec(), table_names(con, spec().dataset))
    assert [(d.id, d.reason) for d in letters] == [
        ("web_events:2", "not valid JSON (Expecting property name enclosed in double quotes)"),
        ("web_events:3", 'column customer_id: "x" is not a integer'),
        ("web_events:4", 'column customer_id: "y" is not a integer'),
    ]
    exported = tmp_path / "dead.jsonl"
    replay.export(letters, exported)
    lines = {d["dead_letter"]: d for d in map(json.loads, exported.read_text().splitlines())}
    lines["web_events:3"]["record"]["customer_id"] = "5"
    lines["web_events:4"]["record"]["customer_id"] = "6"
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text("".join(json.dumps(line) + "\n" for line in lines.values()))
    with wh.connect() as con:
        planned = replay.plan(spec(), wh.target(), con, replay.corrected(letters, fixed), "r1")
    replay.load(spec(), wh.target(), planned)
    assert dict(planned.result.outcomes) == {
        ("web_events", "still bad"): 1,
        ("web_events", "replayed"): 1,
        ("web_events", "superseded"): 1,
    }
    assert raw(settings, "select event_id, customer_id, _stream_seq from raw_web.web_events order by 1") == [
        ("e1", 1, 1),
        ("e2", 5, 3),  # the corrected message, with its own sequence
        ("e3", 3, 5),  # the later message stays
    ]
    assert raw(settings, "select dead_letter, outcome, replay_id from raw_web._replays order by 1") == [
        ("web_events:2", "still bad", "r1"),
        ("web_events:3", "replayed", "r1"),
        ("web_events:4", "superseded", "r1"),
    ]
    with wh.connect() as con:
        assert [d.id for d in replay.pending(con, spec(), table_names(con, spec().dataset))] == ["web_events:2"]
    with pytest.raises(replay.ReplayRefused, match="line 1: names no pending dead letter"):
        replay.corrected([], fixed)
