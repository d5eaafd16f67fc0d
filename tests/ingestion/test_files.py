"""File sources: real CSV, JSONL and Parquet files (some gzipped, some malformed or truncated) in a
landing folder. Each file loads exactly once, replaced files load again, bad rows go to quarantine
with file, line and reason, and a file that cannot be read loads nothing and fails naming it."""

from __future__ import annotations

import gzip
import os
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dusk.settings import Settings
from ingestion import files
from ingestion.declaration import SourceSpec
from ingestion.dlt_settings import configure_dlt
from ingestion.result import SourceResult
from ingestion.run import make_pipeline
from tests.helpers import ingest, raw, sources, target

SOURCES_YML = """
sources:
  marketing:
    kind: files
    description: marketing spend and FX rates dropped as files
    files:
      path: {landing}
      archive: {archive}
      max_bad_share: 0.3
    tables:
      spend:
        pattern: "spend_*.csv*"
        primary_key: [spend_date, channel]
        columns:
          spend_date: date
          channel: text
          amount: decimal(12,2)
          clicks: integer
      fx_rates:
        pattern: "fx_*"
        primary_key: [rate_date, currency]
        columns:
          rate_date: date
          currency: text
          rate: double
"""

SPEND = "spend_date,channel,amount,clicks\n2026-01-01,search,100.50,10\n2026-01-01,social,20.00,3\n"


@pytest.fixture
def landing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    configure_dlt()
    folder = tmp_path / "landing"
    folder.mkdir()
    (tmp_path / "sources.yml").write_text(SOURCES_YML.format(landing=folder, archive="false"))
    monkeypatch.setenv("DUSK_SOURCES_FILE", str(tmp_path / "sources.yml"))
    return folder


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)


def spec() -> SourceSpec:
    return sources()["marketing"]


def counts(result: SourceResult) -> dict[str, tuple[int, int]]:
    return {t.table: (t.extracted, t.quarantined) for t in result.tables}


def gz(path: Path, text: str) -> None:
    with gzip.open(path, "wt") as f:
        f.write(text)


def test_csv_gzip_jsonl_and_parquet_load_once_each(landing: Path, settings: Settings) -> None:
    (landing / "spend_2026-01-01.csv").write_text(SPEND)
    gz(landing / "spend_2026-01-02.csv.gz", "spend_date,channel,amount,clicks\n2026-01-02,search,7.25,1\n")
    (landing / "fx_2026-01-01.jsonl").write_text(
        '{"rate_date": "2026-01-01", "currency": "EUR", "rate": 1.08}\n'
        '{"rate_date": "2026-01-01", "currency": "GBP", "rate": 1.27, "extra": "lands as text"}\n'
    )
    pq.write_table(
        pa.table({"rate_date": ["2026-01-02"], "currency": ["EUR"], "rate": [1.09]}), landing / "fx_2026-01-02.parquet"
    )
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert counts(result) == {"spend": (3, 0), "fx_rates": (3, 0)}
    assert raw(
        settings, "select spend_date::text, channel, amount, clicks, _file from raw_marketing.spend order by 1, 2"
    ) == [
        ("2026-01-01", "search", Decimal("100.50"), 10, "spend_2026-01-01.csv"),
        ("2026-01-01", "social", Decimal("20.00"), 3, "spend_2026-01-01.csv"),
        ("2026-01-02", "search", Decimal("7.25"), 1, "spend_2026-01-02.csv.gz"),
    ]
    assert raw(settings, "select count(*), sum(rate) from raw_marketing.fx_rates") == [(3, 1.08 + 1.27 + 1.09)]
    assert raw(settings, "select count(*) from raw_marketing._files") == [(4,)]
    (landing / "spend_2026-01-09.csv.part").write_text(SPEND)  # an upload in flight is not read
    (landing / ".spend_2026-01-10.csv").write_text(SPEND)
    # again: nothing new; a copy of a loaded file under its own name with the same content is skipped too
    (landing / "spend_2026-01-01.csv").write_text(SPEND)
    again = ingest(spec(), settings)
    assert again.ok and counts(again) == {"spend": (0, 0), "fx_rates": (0, 0)}
    assert raw(settings, "select count(*) from raw_marketing.spend") == [(3,)]


def test_a_replaced_file_loads_again_and_replaces_its_rows(landing: Path, settings: Settings) -> None:
    path = landing / "spend_2026-01-01.csv"
    path.write_text(SPEND)
    assert ingest(spec(), settings).ok
    path.write_text("spend_date,channel,amount,clicks\n2026-01-01,search,111.00,11\n")
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert counts(result)["spend"] == (1, 0)
    assert raw(settings, "select channel, amount from raw_marketing.spend order by 1") == [
        ("search", Decimal("111.00")),
        ("social", Decimal("20.00")),  # a key only the old version had stays (merge on the key)
    ]
    assert raw(
        settings, "select count(distinct sha256) from raw_marketing._files where file = 'spend_2026-01-01.csv'"
    ) == [(2,)]


@pytest.mark.badinput
def test_malformed_rows_go_to_quarantine_with_file_line_and_reason(landing: Path, settings: Settings) -> None:
    (landing / "spend_2026-01-03.csv").write_text(
        "spend_date,channel,amount,clicks\n"
        "2026-01-03,search,10.00,1\n"
        "2026-01-03,social,ten,2\n"  # line 3: not a number
        "2026-13-45,email,1.00,1\n"  # line 4: not a date
        "2026-01-03,display,5.00\n"  # line 5: a field short
        ",tv,1.00,1\n"  # line 6: empty key
        "2026-01-03,radio,1.00,1\n"
        "2026-01-03,print,2.00,2\n"
        "2026-01-03,outdoor,3.00,3\n"
        "2026-01-03,search,12.00,4\n"  # line 10: the same key as line 2, and it wins
        "2026-01-03,podcast,4.00,4\n"
        "2026-01-03,video,5.00,5\n"
        "2026-01-03,affiliate,6.00,6\n"
        "2026-01-03,partner,7.00,7\n"
        "2026-01-03,referral,8.00,8\n"
        "2026-01-03,events,9.00,9\n"
        "2026-01-03,direct,9.50,9\n"
        "2026-01-03,catalog,1.50,1\n"
        "2026-01-03,sms,0.50,1\n"
    )
    (landing / "fx_2026-01-03.jsonl").write_text(
        '{"rate_date": "2026-01-03", "currency": "EUR", "rate": 1.1}\n{not json\n'
        '{"rate_date": "2026-01-03", "currency": "GBP", "rate": 1.3}\n'
        '{"rate_date": "2026-01-03", "currency": "JPY", "rate": 0.007}\n'
    )
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert counts(result) == {"spend": (13, 5), "fx_rates": (3, 1)}
    quarantined = raw(settings, "select file, line, reason from raw_marketing._quarantine order by file, line")
    assert quarantined == [
        ("fx_2026-01-03.jsonl", 2, "not valid JSON (Expecting property name enclosed in double quotes)"),
        ("spend_2026-01-03.csv", 2, "duplicate key: line 10 of the file has the same key and wins"),
        ("spend_2026-01-03.csv", 3, 'column amount: "ten" is not a decimal(12,2)'),
        ("spend_2026-01-03.csv", 4, 'column spend_date: "2026-13-45" is not a date'),
        ("spend_2026-01-03.csv", 5, "expected 4 fields, found 3"),
        ("spend_2026-01-03.csv", 6, "primary key column spend_date is empty"),
    ]
    assert raw(settings, "select amount from raw_marketing.spend where channel = 'search'") == [(Decimal("12.00"),)]
    assert raw(settings, "select record from raw_marketing._quarantine where line = 3") == [
        ('{"spend_date":"2026-01-03","channel":"social","amount":"ten","clicks":"2"}',)
    ]


@pytest.mark.badinput
def test_a_number_the_declared_type_would_round_is_quarantined_not_rounded(landing: Path, settings: Settings) -> None:
    """DuckDB's cast rounds '1.005' to decimal(12,2) 1.01 and '2.5' to an integer 3: such a value
    is kept as a dead letter instead (plain and scientific notation); exact ones load."""
    (landing / "spend_2026-01-06.csv").write_text(
        "spend_date,channel,amount,clicks\n"
        "2026-01-06,search,1.005,1\n"  # line 2: three decimal places
        "2026-01-06,social,2.00,2.5\n"  # line 3: clicks not whole
        "2026-01-06,email,1e-3,1\n"  # line 4: scientific, rounds to 0.00
        "2026-01-06,display, 3.1000 ,1.0\n"
        "2026-01-06,radio,1.5e2,2e1\n" + "".join(f"2026-01-06,c{i},1.00,1\n" for i in range(7))
    )
    result = ingest(spec(), settings)
    assert result.ok, result.error
    rounded = "has more decimal places than its declared type {} holds (it would be rounded)"
    assert raw(settings, "select line, reason from raw_marketing._quarantine order by line") == [
        (2, 'column amount: "1.005" ' + rounded.format("decimal(12,2)")),
        (3, 'column clicks: "2.5" ' + rounded.format("integer")),
        (4, 'column amount: "1e-3" ' + rounded.format("decimal(12,2)")),
    ]
    assert raw(
        settings,
        "select channel, amount, clicks from raw_marketing.spend where channel in ('display', 'radio') order by 1",
    ) == [("display", Decimal("3.10"), 1), ("radio", Decimal("150.00"), 20)]


@pytest.mark.badinput
def test_too_many_bad_rows_or_an_unreadable_file_load_nothing_and_name_the_file(
    landing: Path, settings: Settings
) -> None:
    (landing / "spend_2026-01-04.csv").write_text(
        "spend_date,channel,amount,clicks\n2026-01-04,search,x,1\n2026-01-04,social,y,1\n2026-01-04,email,1.00,1\n"
    )
    data = gzip.compress(SPEND.encode())
    (landing / "spend_2026-01-05.csv.gz").write_bytes(data[: len(data) // 2])  # truncated in transit
    (landing / "fx_2026-01-04.jsonl").write_text('{"rate_date": "2026-01-04", "currency": "EUR", "rate": 1.2}\n')
    result = ingest(spec(), settings)
    assert not result.ok
    error = result.error or ""
    assert "source 'marketing', table 'spend': file spend_2026-01-04.csv: 2 of 3 rows are bad" in error
    assert "max_bad_share=0.3" in error and "line 2: column amount" in error
    assert "file spend_2026-01-05.csv.gz: cannot be read (Compressed file ended" in error
    assert "nothing loaded" in error
    assert counts(result) == {"spend": (0, 0), "fx_rates": (1, 0)}  # the good file still loads
    assert raw(settings, "select file from raw_marketing._files") == [("fx_2026-01-04.jsonl",)]
    assert raw(settings, "select count(*) from raw_marketing.spend") == [(0,)]  # exists for dbt, empty
    # the failed files are tried again next run (and fail again until fixed)
    again = ingest(spec(), settings)
    assert not again.ok and "spend_2026-01-05.csv.gz" in (again.error or "")
    (landing / "spend_2026-01-05.csv.gz").write_bytes(data)
    (landing / "spend_2026-01-04.csv").unlink()
    fixed = ingest(spec(), settings)
    assert fixed.ok, fixed.error
    assert counts(fixed)["spend"] == (2, 0)


def test_an_interrupted_load_neither_loses_nor_repeats_a_file(landing: Path, settings: Settings) -> None:
    (landing / "spend_2026-01-01.csv").write_text(SPEND)
    source = spec()
    pipeline = make_pipeline(source, target(settings))
    plan = files.plan_files(pipeline, source, landing)
    prepared = files.prepare(source, plan, settings.data_dir / "staging")
    pipeline.extract(files.files_source(source, plan, prepared))
    assert pipeline.has_pending_data  # killed before the load: neither rows nor ledger landed
    (landing / "fx_2026-01-01.jsonl").write_text('{"rate_date": "2026-01-01", "currency": "EUR", "rate": 1.0}\n')
    result = ingest(source, settings)
    assert result.ok, result.error
    assert result.finished_pending
    assert counts(result) == {"spend": (0, 0), "fx_rates": (1, 0)}  # the spend file came with the old package
    assert raw(settings, "select count(*) from raw_marketing.spend") == [(2,)]
    assert raw(settings, "select count(*) from raw_marketing._files") == [(2,)]


def test_loaded_files_move_to_the_archive(tmp_path: Path, landing: Path, settings: Settings) -> None:
    (tmp_path / "sources.yml").write_text(SOURCES_YML.format(landing=landing, archive="true"))
    (landing / "spend_2026-01-01.csv").write_text(SPEND)
    (landing / "fx_2026-01-01.jsonl").write_text("{broken\n")  # every row bad: fails, stays in landing
    result = ingest(spec(), settings)
    assert not result.ok
    assert sorted(p.name for p in (landing / "archive").iterdir()) == ["spend_2026-01-01.csv"]
    assert sorted(p.name for p in landing.iterdir() if p.is_file()) == ["fx_2026-01-01.jsonl"]
    (landing / "spend_2026-01-01.csv").write_text(SPEND)  # dropped again, same content: not loaded twice
    (landing / "fx_2026-01-01.jsonl").unlink()
    again = ingest(spec(), settings)
    assert again.ok and counts(again)["spend"] == (0, 0)
    assert len(list((landing / "archive").iterdir())) == 2
    assert not [p for p in landing.iterdir() if p.is_file()]
    assert os.path.exists(landing / "archive" / "spend_2026-01-01.csv")


@pytest.mark.badinput
def test_undeclared_columns_reach_raw_as_text_and_are_named(landing: Path, settings: Settings) -> None:
    """A column the files carry but sources.yml does not declare lands in raw as the file's text
    (nested values as JSON, never a Python repr) and the summary names it; a declared column that
    no JSONL record carries loads as NULL and is named too."""
    (landing / "spend_2026-01-01.csv").write_text(
        "spend_date,channel,amount,clicks,campaign\n2026-01-01,search,1.00,1,winter sale\n"
    )
    (landing / "fx_2026-01-01.jsonl").write_text(
        '{"rate_date": "2026-01-01", "currency": "EUR", "source": {"bank": "ECB", "at": [16, 0]}}\n'
    )
    pq.write_table(
        pa.table(
            {
                "rate_date": ["2026-01-02"],
                "currency": ["GBP"],
                "rate": [1.27],
                "quote": pa.array([{"bid": 1.26, "tags": ["x"]}]),
                "raw_bytes": pa.array([b"\x00\xff"]),
            }
        ),
        landing / "fx_2026-01-02.parquet",
    )
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert raw(settings, "select channel, campaign from raw_marketing.spend") == [("search", "winter sale")]
    assert raw(settings, "select currency, rate, source, quote, raw_bytes from raw_marketing.fx_rates order by 1") == [
        ("EUR", None, '{"bank": "ECB", "at": [16, 0]}', None, None),
        ("GBP", 1.27, None, '{"bid": 1.26, "tags": ["x"]}', "\\x00ff"),
    ]
    assert sorted(result.notes) == [
        "fx_rates: column(s) ['quote', 'raw_bytes'] of file fx_2026-01-02.parquet are not declared in sources.yml: "
        "they landed in raw as text; declare them under columns: to give them a type",
        "fx_rates: column(s) ['source'] of file fx_2026-01-01.jsonl are not declared in sources.yml: they landed in "
        "raw as text; declare them under columns: to give them a type",
        "fx_rates: declared column(s) ['rate'] are in no record of file fx_2026-01-01.jsonl: loaded as NULL",
        "spend: column(s) ['campaign'] of file spend_2026-01-01.csv are not declared in sources.yml: they landed in "
        "raw as text; declare them under columns: to give them a type",
    ]
    # a later file without the column: raw keeps it, NULL for the new rows
    (landing / "spend_2026-01-02.csv").write_text(SPEND.replace("2026-01-01", "2026-01-02"))
    assert ingest(spec(), settings).ok
    assert raw(settings, "select count(*), count(campaign) from raw_marketing.spend") == [(3, 1)]


def test_a_key_in_two_files_of_one_run_is_counted_once(landing: Path, settings: Settings) -> None:
    (landing / "spend_2026-01-01a.csv").write_text(SPEND)
    (landing / "spend_2026-01-01b.csv").write_text(SPEND.replace("100.50", "111.00"))
    result = ingest(spec(), settings)
    assert result.ok, result.error
    assert counts(result)["spend"] == (2, 0)
    assert {t.table: t.loaded for t in result.tables}["spend"] == 2
    assert raw(settings, "select amount from raw_marketing.spend where channel = 'search'") == [(Decimal("111.00"),)]
    assert result.notes == [
        "spend: 2 row(s) were replaced by a later file's row with the same key in this run "
        "(the last file in name order wins)"
    ]


def test_a_json_column_lands_as_json(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """``json`` declares a column of nested values: JSONL objects, lists and scalars, a CSV cell
    of JSON text and a Parquet struct all land as JSON (DuckDB's JSON type); text that is not
    JSON goes to quarantine."""
    configure_dlt()
    landing = tmp_path / "drop"
    landing.mkdir()
    (tmp_path / "sources.yml").write_text(
        f"sources:\n  feed:\n    kind: files\n    files: {{path: {landing}, max_bad_share: 0.5}}\n    tables:\n"
        "      items:\n        pattern: 'items_*'\n        primary_key: id\n"
        "        columns: {id: integer, meta: json}\n"
    )
    monkeypatch.setenv("DUSK_SOURCES_FILE", str(tmp_path / "sources.yml"))
    (landing / "items_1.jsonl").write_text(
        '{"id": 1, "meta": {"a": [1, "x"], "b": null}}\n{"id": 2, "meta": "plain"}\n{"id": 3, "meta": [true, 2.5]}\n'
    )
    (landing / "items_2.csv").write_text('id,meta\n4,"{""k"": 1}"\n5,{not json\n')
    pq.write_table(pa.table({"id": [6], "meta": pa.array([{"n": 1, "s": "é"}])}), landing / "items_3.parquet")
    result = ingest(sources()["feed"], settings)
    assert result.ok, result.error
    assert {t.table: (t.extracted, t.quarantined) for t in result.tables} == {"items": (5, 1)}
    assert raw(
        settings,
        "select data_type from information_schema.columns where table_schema = 'raw_feed' and column_name = 'meta'",
    ) == [("JSON",)]
    assert raw(settings, "select id, meta from raw_feed.items order by id") == [
        (1, '{"a": [1, "x"], "b": null}'),
        (2, '"plain"'),
        (3, "[true, 2.5]"),
        (4, '{"k": 1}'),
        (6, '{"n": 1, "s": "é"}'),
    ]
    assert raw(settings, "select line, reason from raw_feed._quarantine") == [
        (3, 'column meta: "{not json" is not a json')
    ]


@pytest.mark.badinput
def test_a_header_with_an_empty_or_repeated_name_fails_the_file(landing: Path, settings: Settings) -> None:
    """A trailing comma in a CSV header (an empty name), or a name twice: the values under it
    would have no column of their own, so the file loads nothing and is named."""
    (landing / "spend_2026-01-01.csv").write_text("spend_date,channel,amount,clicks,\n2026-01-01,search,1.00,1,x\n")
    (landing / "spend_2026-01-02.csv").write_text("spend_date,channel,amount,clicks,clicks\n2026-01-02,search,1,1,2\n")
    result = ingest(spec(), settings)
    assert not result.ok and result.error is not None
    for name in ("spend_2026-01-01.csv", "spend_2026-01-02.csv"):
        assert f"file {name}: the header has an empty or repeated column name" in result.error
