"""One night: ingest every source, build and test with dbt, generate the docs.

This is the one place that decides whether a run succeeded; the CLI turns the outcome into an
exit code.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from dusk.dbt_sources import check_dbt_sources
from dusk.demo import ensure_demo, serve_payments_api
from dusk.ingest import SourceResult, configure_dlt, ingest_source
from dusk.ledger import ensure_ledger, write_ledger
from dusk.pii import install_salt
from dusk.settings import Settings, quiet_telemetry
from dusk.transform import DbtResult, run_dbt
from ingestion.config import SourceSpec, load_sources

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Everything the summary shows about one run."""

    started_at: datetime
    settings: Settings
    sources: list[SourceResult] = field(default_factory=list)
    dbt: DbtResult | None = None
    demo_created: bool = False
    error: str | None = None
    seconds: float = 0.0

    @property
    def failed_sources(self) -> list[str]:
        """Sources that failed tonight (a skipped optional source is not a failure)."""
        return [s.source for s in self.sources if not s.ok and not s.skipped]

    @property
    def status(self) -> str:
        """``success``: everything loaded, built and passed. ``partial``: some sources failed, and
        everything that does not depend on them was built and passed. ``failed``: otherwise."""
        if self.error is not None or self.dbt is None or not self.dbt.ok:
            return "failed"
        loaded = [s for s in self.sources if s.ok and not s.skipped]
        if self.failed_sources:
            return "partial" if loaded else "failed"
        return "success"

    @property
    def ok(self) -> bool:
        """True only when every source loaded and every dbt node and test passed."""
        return self.status == "success"


def run(settings: Settings, select_models: list[str] | None = None, full_refresh: bool = False) -> RunResult:
    """Run the whole night and return what happened; raises nothing for data or tool failures."""
    quiet_telemetry()
    configure_dlt()
    # dbt's profile reads the warehouse path from here, so dlt and dbt write to the same file.
    os.environ["DUSK_WAREHOUSE"] = str(settings.warehouse)
    started = time.monotonic()
    result = RunResult(started_at=datetime.now(UTC), settings=settings)
    settings.warehouse.parent.mkdir(parents=True, exist_ok=True)
    try:
        specs = load_sources()
        check_dbt_sources(specs)
        install_salt(settings)
        with duckdb.connect(str(settings.warehouse)) as con:
            ensure_ledger(con)
        if settings.demo:
            result.demo_created = ensure_demo(settings, specs)
    except Exception as exc:
        result.error = str(exc)
        result.seconds = time.monotonic() - started
        record(result)
        return result
    with serve_payments_api(settings, specs) if settings.demo else nullcontext():
        for spec in specs.values():
            result.sources.append(ingest_with_retries(spec, settings))
    window = loaded_event_window(settings, specs, result.sources)
    # what depends on a source that failed tonight is left as it was (and reported), the rest is built
    skip = [f"source:{name}+" for name in result.failed_sources]
    result.dbt = run_dbt(settings, select=select_models, full_refresh=full_refresh, event_window=window, exclude=skip)
    result.seconds = time.monotonic() - started
    record(result)
    return result


def record(result: RunResult) -> None:
    """Write the run record and the ledger. A ledger that cannot be written fails the run (the
    monitoring reads it) but never loses the record."""
    write_run_record(result)
    try:
        write_ledger(result)
    except Exception as exc:
        log.exception("ledger not written")
        if result.error is None:
            result.error = f"the run ledger ({result.settings.warehouse}, schema dusk_ledger) was not written: {exc}"
            write_run_record(result)


def ingest_with_retries(spec: SourceSpec, settings: Settings) -> SourceResult:
    """Ingest a source; a transient failure (the server briefly unreachable) is retried with
    exponential backoff and jitter, DUSK_SOURCE_ATTEMPTS times in all, then reported as failed.
    Each attempt starts with what the previous one left (pending load packages are finished)."""
    attempt, started = 1, time.monotonic()
    while True:
        result = ingest_source(spec, settings)
        result.attempts = attempt
        if result.ok or not result.transient or attempt >= settings.source_attempts:
            result.seconds = time.monotonic() - started  # every attempt and pause
            return result
        pause = min(60.0, settings.source_backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
        log.warning(
            "source=%s attempt=%d of %d failed (transient), retrying in %.1fs: %s",
            spec.name,
            attempt,
            settings.source_attempts,
            pause,
            result.error,
        )
        time.sleep(pause)
        attempt += 1


def loaded_event_window(
    settings: Settings, specs: dict[str, SourceSpec], sources: list[SourceResult]
) -> tuple[date, date] | None:
    """The days (first, last + 1) of the rows this run loaded into tables that declare an
    `event_time`: dbt's microbatch models rebuild exactly those days, late events included.
    None when no such row was loaded (dbt then uses each model's own lookback)."""
    spans = []
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        for source in sources:
            spec = specs[source.source]
            for table in spec.tables:
                if not table.event_time or not source.load_ids:
                    continue
                placeholders = ", ".join("?" for _ in source.load_ids)
                span = con.execute(
                    f'select min(cast("{table.event_time}" as date)), max(cast("{table.event_time}" as date)) '
                    f'from "{spec.dataset}"."{table.name}" where _dlt_load_id in ({placeholders})',
                    source.load_ids,
                ).fetchone()
                if span and span[0] is not None:
                    spans.append(span)
    if not spans:
        return None
    return min(s[0] for s in spans), max(s[1] for s in spans) + timedelta(days=1)


def write_run_record(result: RunResult) -> Path:
    """Write the run as JSON to <data dir>/runs/<start time>.json and last_run.json (atomically)."""
    runs = result.settings.data_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    record = {"ok": result.ok, "status": result.status, **asdict(result)}
    text = json.dumps(record, indent=2, default=str)
    path = runs / f"{result.started_at:%Y%m%dT%H%M%S%fZ}.json"
    path.write_text(text)
    tmp = runs / "last_run.json.tmp"
    tmp.write_text(text)
    tmp.replace(runs / "last_run.json")
    return path
