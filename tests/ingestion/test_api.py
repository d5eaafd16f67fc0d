"""REST API sources against the demo payments API served over real HTTP (uvicorn on 127.0.0.1):
token auth, cursor pagination, incremental on updated_at, and injected 429 with Retry-After, 5xx,
and responses slower than the client's timeout. Failures name the endpoint and status, load
nothing and leave the cursor where it was; the token never reaches a log line."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from dusk.demo.payments_api import Chaos, PaymentsServer, PaymentsStore, serving, stamp
from dusk.settings import Settings
from ingestion.api.session import retry_after
from ingestion.api.source import ExactNumbers
from ingestion.declaration import SourceSpec
from ingestion.dlt_settings import configure_dlt
from ingestion.result import SourceResult
from ingestion.run import make_pipeline
from tests.helpers import ingest, raw, sources, target

SOURCES_YML = """
sources:
  payments:
    kind: api
    description: the payments API
    api:
      page_size: 7
      timeout: {timeout}
      max_attempts: {attempts}
      backoff: 0.05
      max_backoff: 2
      breaker_failures: {breaker}
    tables:
      payments:
        path: payments
        primary_key: payment_id
        cursor: updated_at
        cursor_param: updated_since
"""


def write_sources(tmp_path: Path, timeout: float = 1.0, attempts: int = 4, breaker: int = 6) -> None:
    (tmp_path / "sources.yml").write_text(SOURCES_YML.format(timeout=timeout, attempts=attempts, breaker=breaker))


@pytest.fixture
def store(tmp_path: Path) -> PaymentsStore:
    store = PaymentsStore(tmp_path / "payments.sqlite")
    store.create()
    orders = [{"order_id": i, "amount": f"{i}.50"} for i in range(1, 31)]
    store.record(random.Random(1), orders, datetime(2026, 1, 1))
    return store


@pytest.fixture
def api(store: PaymentsStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PaymentsServer]:
    configure_dlt()
    write_sources(tmp_path)
    monkeypatch.setenv("DUSK_SOURCES_FILE", str(tmp_path / "sources.yml"))
    with serving(store.db_path, chaos=Chaos(slow_seconds=1.5)) as server:
        monkeypatch.setenv("SOURCES__PAYMENTS__BASE_URL", server.url)
        monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", server.token)
        yield server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)


def spec() -> SourceSpec:
    return sources()["payments"]


def extracted(result: SourceResult) -> int:
    return {t.table: t.extracted for t in result.tables}["payments"]


def cursor(settings: Settings) -> str | None:
    state = make_pipeline(spec(), target(settings)).state
    resource = state.get("sources", {}).get("payments", {}).get("resources", {}).get("payments", {})
    return resource.get("incremental", {}).get("updated_at", {}).get("last_value")


def test_pages_load_incrementally_and_no_page_twice(
    api: PaymentsServer, store: PaymentsStore, settings: Settings
) -> None:
    first = ingest(spec(), settings)
    assert first.ok, first.error
    assert extracted(first) == 30
    assert api.chaos.requests == 5  # 30 rows in pages of 7
    assert raw(settings, "select count(*), count(distinct payment_id) from raw_payments.payments") == [(30, 30)]
    quiet = ingest(spec(), settings)
    assert quiet.ok and extracted(quiet) == 0  # rows at the watermark are known and not loaded again
    written = store.record(random.Random(2), [{"order_id": 31, "amount": "5.00"}], datetime(2026, 1, 2))
    later = ingest(spec(), settings)
    assert later.ok, later.error
    assert extracted(later) == written  # the new payment and the day's refunds
    assert raw(settings, "select count(*), count(distinct payment_id) from raw_payments.payments") == [(31, 31)]
    refunded = raw(settings, "select count(*) from raw_payments.payments where status = 'refunded'")
    with sqlite3.connect(store.db_path) as con:
        assert refunded == con.execute("select count(*) from payments where status = 'refunded'").fetchall()


@pytest.mark.badinput
def test_429_5xx_and_timeouts_are_retried_honouring_retry_after(api: PaymentsServer, settings: Settings) -> None:
    api.chaos.retry_after = 1
    api.chaos.script = deque(["429", "ok", "503", "500", "ok", "slow", "ok"])
    started = datetime.now()
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert extracted(result) == 30
    assert api.chaos.faults == ["429", "503", "500", "slow"]
    assert (datetime.now() - started).total_seconds() >= 1.0  # waited the Retry-After second
    assert raw(settings, "select count(*), count(distinct payment_id) from raw_payments.payments") == [(30, 30)]


@pytest.mark.badinput
def test_exhausted_retries_fail_the_source_naming_endpoint_and_status(
    api: PaymentsServer, store: PaymentsStore, settings: Settings
) -> None:
    assert ingest(spec(), settings).ok
    before = cursor(settings)
    written = store.record(random.Random(3), [{"order_id": 40, "amount": "1.00"}], datetime(2026, 1, 3))
    api.chaos.script = deque(["503"] * 4)
    result = ingest(spec(), settings)
    assert not result.ok
    error = result.error or ""
    assert "source 'payments'" in error and "503 Server Error" in error
    assert f"{api.url}payments" in error
    assert cursor(settings) == before  # the failed run did not move it
    assert raw(settings, "select count(*) from raw_payments.payments") == [(30,)]
    again = ingest(spec(), settings)  # the server recovered: the missed row arrives, once
    assert again.ok and extracted(again) == written


def test_the_circuit_breaker_opens_after_consecutive_failures(
    api: PaymentsServer, tmp_path: Path, settings: Settings
) -> None:
    write_sources(tmp_path, attempts=10, breaker=3)
    api.chaos.script = deque(["500", "slow", "503", "ok"])
    result = ingest(spec(), settings)
    assert not result.ok
    error = result.error or ""
    assert "circuit breaker open after 3 failed attempts in a row" in error
    assert f"GET {api.url}payments" in error and "-> 503" in error
    assert api.chaos.requests == 3  # it stopped asking
    assert cursor(settings) is None
    assert raw(settings, "select count(*) from information_schema.tables where table_name = 'payments'") == [(0,)]


@pytest.mark.badinput
def test_wrong_token_fails_at_once_and_the_token_is_never_logged(
    api: PaymentsServer, settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api.chaos.script = deque(["503"])
    ok = ingest(spec(), settings)
    assert ok.ok, ok.error
    monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "not-the-token")
    denied = ingest(spec(), settings)
    assert not denied.ok
    assert "401 Client Error" in (denied.error or "")
    assert api.chaos.requests == 7  # 5 pages + the retried 503, then one 401 that is not retried
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert api.token not in logged and api.token not in (denied.error or "")
    assert "not-the-token" not in logged


def test_payment_times_are_utc_text(store: PaymentsStore) -> None:
    assert stamp(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000Z"


@pytest.mark.badinput
def test_a_response_that_is_not_json_fails_the_source_and_keeps_the_cursor(
    api: PaymentsServer, store: PaymentsStore, settings: Settings
) -> None:
    assert ingest(spec(), settings).ok
    before = cursor(settings)
    written = store.record(random.Random(4), [{"order_id": 41, "amount": "2.00"}], datetime(2026, 1, 4))
    api.chaos.script = deque(["badjson"])
    result = ingest(spec(), settings)
    assert not result.ok
    error = result.error or ""
    assert "source 'payments'" in error and "JSON" in error, error
    assert cursor(settings) == before  # nothing of the bad page was committed
    assert raw(settings, "select count(*) from raw_payments.payments") == [(30,)]
    again = ingest(spec(), settings)  # the next run reads the page again
    assert again.ok and extracted(again) == written
    assert raw(settings, "select count(*), count(distinct payment_id) from raw_payments.payments") == [(31, 31)]


class _Pages(BaseHTTPRequestHandler):
    """Serves ``PAGES`` by the ``cursor`` parameter (page number), whatever ``updated_since`` says."""

    pages: ClassVar[list[list[dict]]] = []
    loop_to: ClassVar[int | None] = None
    """The page the last page's next cursor leads back to (None: the last page ends the paging)."""
    content_type: ClassVar[str] = "application/json"
    numbers: ClassVar[dict[str, str]] = {}
    """Strings of the pages sent as these JSON numbers instead (written as a producer writes them)."""

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        page = int(query.get("cursor", ["0"])[0])
        more = page + 1 < len(self.pages)
        after = str(page + 1) if more else (None if self.loop_to is None else str(self.loop_to))
        text = json.dumps({"data": self.pages[page], "next_cursor": after})
        for placeholder, number in self.numbers.items():
            text = text.replace(json.dumps(placeholder), number)
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def pages_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> Iterator[None]:
    """``_Pages`` served over HTTP on 127.0.0.1, and sources.yml's payments source pointing at it."""
    monkeypatch.setattr(_Pages, "loop_to", _Pages.loop_to)  # restored after the test
    monkeypatch.setattr(_Pages, "content_type", _Pages.content_type)
    monkeypatch.setattr(_Pages, "numbers", {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        configure_dlt()
        write_sources(tmp_path)
        with (tmp_path / "sources.yml").open("a") as f:
            f.write(extra)
        monkeypatch.setenv("DUSK_SOURCES_FILE", str(tmp_path / "sources.yml"))
        monkeypatch.setenv("SOURCES__PAYMENTS__BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
        yield
    finally:
        server.shutdown()
        server.server_close()


def _payment(pid: int, at: str, amount: str) -> dict:
    return {"payment_id": pid, "updated_at": at, "amount": amount}


@pytest.mark.badinput
def test_a_record_served_twice_keeps_its_newest_copy_and_is_counted_once(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API whose pages move: payment 2 is updated while the night pages through and is served
    again later (newer), payment 3 is served again older, payment 6 twice with the same cursor.
    Raw holds one row per payment: the newest by updated_at, ties the last served."""
    t = "2026-01-01T00:00:0{}Z"
    _Pages.pages = [
        [_payment(1, t.format(1), "1.00"), _payment(2, t.format(2), "2.00"), _payment(3, t.format(5), "3.50")],
        [_payment(4, t.format(3), "4.00"), _payment(2, t.format(6), "2.60"), _payment(3, t.format(3), "3.00")],
        [_payment(6, t.format(7), "6.00"), _payment(6, t.format(7), "6.70")],
    ]
    with pages_served(tmp_path, monkeypatch):
        result = ingest(spec(), settings)
    assert result.ok, result.error
    stats = {t.table: t for t in result.tables}["payments"]
    assert (stats.extracted, stats.loaded) == (5, 5)
    assert raw(settings, "select payment_id, amount from raw_payments.payments order by 1") == [
        (1, "1.00"),
        (2, "2.60"),
        (3, "3.50"),
        (4, "4.00"),
        (6, "6.70"),
    ]
    assert result.notes == [
        "payments: 3 record(s) served again in this run (3 key(s), e.g. payment_id=2; payment_id=3; "
        "payment_id=6); the newest by updated_at was kept, counted once"
    ]


@pytest.mark.badinput
@pytest.mark.parametrize("checked", [True, False], ids=["checked", "safety_net"])
def test_a_value_too_large_for_its_declared_decimal_stops_the_table_and_nothing_is_stuck(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, checked: bool
) -> None:
    """An amount with more digits than its declared decimal holds: the table stops naming record,
    column and value, the cursor stays, and once the source is fixed the next run loads every row
    (nothing pending, nothing skipped). ``safety_net``: with that check off, the value reaches dlt
    and fails a job (while the load files are written, or in the warehouse); the run's package is
    aborted and the cursor rewound all the same: a package left pending would fail every night."""
    if not checked:
        monkeypatch.setattr(ExactNumbers, "check", lambda self, item: item)
    t = "2026-01-0{}T00:00:00Z"
    declared = "        columns:\n          amount: decimal(12,2)\n"
    with pages_served(tmp_path, monkeypatch, declared):
        _Pages.pages = [[_payment(1, t.format(1), "1.00")]]
        assert ingest(spec(), settings).ok
        _Pages.pages = [[_payment(2, t.format(2), "123456789012345.00"), _payment(3, t.format(3), "3.00")]]
        failed = ingest(spec(), settings)
        assert not failed.ok
        assert failed.error is not None
        if checked:
            assert (
                "source 'payments', table 'payments': record payment_id=2: column amount: '123456789012345.00' has "
                "more digits before the point than its declared type decimal(12,2) holds; nothing was loaded."
            ) in failed.error
            assert "Declare a wider precision in sources.yml" in failed.error
        else:
            assert failed.error.startswith("source 'payments'") and "refused a value: " in failed.error, failed.error
            assert "its rows are read again next run" in failed.error
        assert not make_pipeline(spec(), target(settings)).has_pending_data
        assert cursor(settings) == t.format(1)
        _Pages.pages = [[_payment(2, t.format(2), "12345.00"), _payment(3, t.format(3), "3.00")]]
        fixed = ingest(spec(), settings)
    assert fixed.ok, fixed.error
    assert extracted(fixed) == 2
    assert cursor(settings) == t.format(3)
    assert raw(settings, "select payment_id, amount from raw_payments.payments order by 1") == [
        (1, Decimal("1.00")),
        (2, Decimal("12345.00")),
        (3, Decimal("3.00")),
    ]


@pytest.mark.badinput
@pytest.mark.parametrize("amount", ["123.456", 1.005, "1E-3"])
def test_a_number_the_declared_type_would_round_stops_the_table(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, amount: object
) -> None:
    """dlt coerces "123.456" to decimal(12,2) as 123.46 without a word: the table stops naming the
    record, column and value instead, the cursor stays, and a wider declaration loads it exactly."""
    t = "2026-01-0{}T00:00:00Z"
    declared = "        columns:\n          amount: decimal(12,2)\n"
    with pages_served(tmp_path, monkeypatch, declared):
        _Pages.pages = [[_payment(1, t.format(1), "1.50"), _payment(2, t.format(2), amount)]]
        failed = ingest(spec(), settings)
    assert not failed.ok
    assert "source 'payments', table 'payments': record payment_id=2: column amount: " in (failed.error or "")
    assert "has more decimal places than its declared type decimal(12,2) holds (it would be rounded)" in (
        failed.error or ""
    )
    assert cursor(settings) is None
    with pages_served(tmp_path, monkeypatch, declared.replace("decimal(12,2)", "decimal(12,4)")):
        fixed = ingest(spec(), settings)
    assert fixed.ok, fixed.error
    assert raw(settings, "select amount from raw_payments.payments order by payment_id") == [
        (Decimal("1.5000"),),
        (Decimal(str(amount)),),
    ]


@pytest.mark.badinput
def test_a_json_fraction_keeps_every_digit_in_a_declared_decimal(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON number with 19 significant digits: read as written into its declared decimal (a
    float would make it ...568.00); an undeclared fraction stays a double, as dlt infers it."""
    declared = "        columns:\n          amount: decimal(20,2)\n"
    with pages_served(tmp_path, monkeypatch, declared):
        _Pages.numbers = {"@big": "12345678901234567.89", "@fee": "0.1"}
        _Pages.pages = [[{**_payment(1, "2026-01-01T00:00:01Z", "@big"), "fee": "@fee"}]]
        result = ingest(spec(), settings)
    assert result.ok, result.error
    assert raw(settings, "select amount, fee from raw_payments.payments") == [(Decimal("12345678901234567.89"), 0.1)]
    types = raw(
        settings,
        "select data_type from information_schema.columns where table_schema = 'raw_payments' "
        "and table_name = 'payments' and column_name = 'fee'",
    )
    assert types == [("DOUBLE",)]


@pytest.mark.badinput
def test_declared_timestamps_load_the_instant_they_name_in_every_form(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declared timestamps are parsed before dlt sees them when they carry an offset (dlt's own
    parse is ~50x slower); the instant is the one the text names, whatever its form, and a text
    without an offset is left to dlt (UTC). The cursor (a declared timestamp too) is saved as
    served."""
    declared = "        columns:\n          updated_at: timestamp\n          paid_at: timestamp\n"
    forms = [
        "2026-01-01T00:00:01Z",
        "2026-01-01T02:00:02+02:00",
        "2025-12-31T19:00:03.250000-05:00",
        "2026-01-01 00:00:04",
        "2026-01-01T00:00:05.5+00:00",
    ]
    with pages_served(tmp_path, monkeypatch, declared):
        _Pages.pages = [
            [{**_payment(i, f"2026-01-02T00:00:0{i}Z", "1.00"), "paid_at": at} for i, at in enumerate(forms)]
        ]
        result = ingest(spec(), settings)
    assert result.ok, result.error
    loaded = raw(settings, "select paid_at, updated_at from raw_payments.payments order by payment_id")
    assert [paid for paid, _ in loaded] == [
        datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 3, 250000, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 4, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 5, 500000, tzinfo=UTC),
    ]
    assert loaded[-1][1] == datetime(2026, 1, 2, 0, 0, 4, tzinfo=UTC)
    assert cursor(settings) == "2026-01-02T00:00:04Z"


@pytest.mark.badinput
@pytest.mark.parametrize("declared", ["timestamp", None])
def test_a_timestamp_finer_than_a_microsecond_stops_the_table_and_text_keeps_it(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, declared: str | None
) -> None:
    """Nanoseconds in a column declared timestamp, or in one dlt would infer as a timestamp: every
    parser on the way would cut them off without a word. The table stops naming the record and
    the value, the cursor stays; zeros below the microsecond are no loss; declared text keeps
    the value as served."""
    stamp = "2026-01-01T00:00:05.123456789Z"
    columns = "        columns:\n          updated_at: timestamp\n"
    extra = columns + (f"          paid_at: {declared}\n" if declared else "")
    _Pages.pages = [
        [
            {**_payment(1, "2026-01-02T00:00:01Z", "1.00"), "paid_at": "2026-01-01T00:00:05.123456000Z"},
            {**_payment(2, "2026-01-02T00:00:02Z", "1.00"), "paid_at": stamp},
        ]
    ]
    with pages_served(tmp_path, monkeypatch, extra):
        stopped = ingest(spec(), settings)
    assert not stopped.ok
    assert (
        f"source 'payments', table 'payments': record payment_id=2: column paid_at: {stamp!r} has digits below "
        "the microsecond, which a timestamp does not hold (they would be cut off); declare the column text"
    ) in (stopped.error or ""), stopped.error
    assert cursor(settings) is None
    with pages_served(tmp_path, monkeypatch, columns + "          paid_at: text\n"):
        kept = ingest(spec(), settings)
    assert kept.ok, kept.error
    assert raw(settings, "select paid_at from raw_payments.payments order by payment_id") == [
        ("2026-01-01T00:00:05.123456000Z",),
        (stamp,),
    ]


@pytest.mark.badinput
@pytest.mark.parametrize(
    ("loop_to", "pages", "expected"),
    [
        (1, 3, "gave the next cursor '1' a second time: its pages lead in a circle"),
        (None, 5, "still more pages after 3 (max_pages)"),
    ],
)
def test_paging_that_would_not_end_stops_the_table_and_keeps_the_cursor(
    tmp_path: Path,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    loop_to: int | None,
    pages: int,
    expected: str,
) -> None:
    """A next cursor that leads back to a page already read, or more pages than api.max_pages:
    the source fails naming the endpoint and the fix, nothing is loaded, the cursor stays."""
    _Pages.pages = [[_payment(p, f"2026-01-01T00:00:0{p}Z", "1.00")] for p in range(pages)]
    with pages_served(tmp_path, monkeypatch):
        text = (
            (tmp_path / "sources.yml").read_text().replace("breaker_failures:", "max_pages: 3\n      breaker_failures:")
        )
        (tmp_path / "sources.yml").write_text(text)
        monkeypatch.setattr(_Pages, "loop_to", loop_to)
        result = ingest(spec(), settings)
    assert not result.ok
    error = result.error or ""
    assert "source 'payments': GET http://127.0.0.1:" in error and expected in error, error
    assert cursor(settings) is None
    loaded = (
        "select count(*) from information_schema.tables where table_schema = 'raw_payments' and table_name = 'payments'"
    )
    assert raw(settings, loaded) == [(0,)]  # nothing of the table was loaded


@pytest.mark.badinput
def test_an_answer_that_is_not_json_names_the_endpoint_status_and_content_type(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _Pages.pages = [[_payment(1, "2026-01-01T00:00:01Z", "1.00")]]
    with pages_served(tmp_path, monkeypatch):
        monkeypatch.setattr(_Pages, "content_type", "text/html; charset=utf-8")
        result = ingest(spec(), settings)
    assert not result.ok
    assert "/payments" in (
        result.error or ""
    ) and "answered 200 with content type 'text/html; charset=utf-8', not JSON" in (result.error or ""), result.error


def test_retry_after_is_read_in_both_its_forms() -> None:
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)
    assert retry_after("120") == 120.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 30.0
    assert retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now) == 0.0  # a date in the past: at once
    assert retry_after("soon") is None
