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
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from dusk import alerts, monitor
from dusk.alerts import AlertOutcome
from dusk.dbt_sources import check_dbt_sources
from dusk.demo import ensure_demo, serve_payments_api
from dusk.ingest import BACKFILL_KINDS, SourceResult, configure_dlt, ingest_source
from dusk.ledger import SCHEMA as LEDGER
from dusk.ledger import ensure_ledger, run_id, write_ledger
from dusk.monitor import Finding
from dusk.pii import install_salt
from dusk.progress import RunProgress, run_log
from dusk.publish import PublishError, PublishResult, check_schemas, publish
from dusk.report import write_report
from dusk.settings import Settings, quiet_telemetry
from dusk.transform import DbtResult, run_dbt
from ingestion.config import SourceSpec, load_sources

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Everything the summary, the ledger, the report and the alert show about one run."""

    started_at: datetime
    settings: Settings
    sources: list[SourceResult] = field(default_factory=list)
    dbt: DbtResult | None = None
    demo_created: bool = False
    error: str | None = None
    seconds: float = 0.0
    mode: str = "run"
    """``run`` or ``backfill <start>..<end>``."""
    findings: list[Finding] = field(default_factory=list)
    published: PublishResult | None = None
    publish_error: str | None = None
    """Why tonight was not published (None when it was, or when nothing ran far enough)."""
    alert: AlertOutcome | None = None
    log_path: Path | None = None
    report_path: Path | None = None
    report_error: str | None = None

    @property
    def failed_sources(self) -> list[str]:
        """Sources that failed tonight (a skipped optional source is not a failure)."""
        return [s.source for s in self.sources if not s.ok and not s.skipped]

    @property
    def status(self) -> str:
        """``success``: everything loaded, built, passed and was published. ``partial``: some
        sources failed, and everything that does not depend on them was built, passed and was
        published. ``failed``: otherwise (a failed test or an error-level monitoring finding
        included: nothing of tonight is published then)."""
        if self.audit_failed or self.publish_error is not None:
            return "failed"
        loaded = [s for s in self.sources if s.ok and not s.skipped]
        if self.failed_sources:
            return "partial" if loaded else "failed"
        return "success"

    @property
    def audit_failed(self) -> bool:
        """The night's own work failed: an error, a dbt failure or an error-level finding."""
        if self.error is not None or self.dbt is None or not self.dbt.ok:
            return True
        return any(f.severity == "error" for f in self.findings)

    @property
    def publishable(self) -> bool:
        """Tonight's data may be published: what was built passed every test and check (a partial
        night publishes; what it did not rebuild stays as it was)."""
        return self.status in ("success", "partial") and self.published is None

    @property
    def ok(self) -> bool:
        """True only when every source loaded and every dbt node, test and check passed."""
        return self.status == "success"


@dataclass(frozen=True)
class Plan:
    """What one run does: which sources it ingests, what dbt builds, and, for a backfill, the
    window it re-reads."""

    sources: tuple[str, ...] = ()
    """Sources to ingest (empty: all of sources.yml)."""
    select: tuple[str, ...] = ()
    """dbt selection (empty: everything, or what depends on ``sources`` when they are given)."""
    full_refresh: bool = False
    backfill: tuple[date, date] | None = None
    """First and last day (inclusive) a backfill re-extracts and rebuilds."""

    @property
    def mode(self) -> str:
        """``run``, or ``backfill <first day>..<last day>``."""
        return "run" if self.backfill is None else f"backfill {self.backfill[0]}..{self.backfill[1]}"

    @property
    def window(self) -> tuple[datetime, datetime] | None:
        """The backfill's cursor window, [first day 00:00 UTC, the day after the last)."""
        if self.backfill is None:
            return None
        first, last = self.backfill
        return (
            datetime.combine(first, datetime.min.time(), UTC),
            datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC),
        )


def run(settings: Settings, progress: RunProgress | None = None, plan: Plan | None = None) -> RunResult:
    """Run the whole night (or ``plan``) and return what happened; raises nothing for data or
    tool failures."""
    plan = plan or Plan()
    result = RunResult(started_at=datetime.now(UTC), settings=settings, mode=plan.mode)
    with run_log(settings.logs_dir / f"{run_id(result)}.jsonl", run_id(result)) as handler:
        result.log_path = handler.path
        _night(result, plan, progress or RunProgress(enabled=False))
    return result


def _chosen(plan: Plan, specs: dict[str, SourceSpec]) -> list[SourceSpec]:
    """The sources the plan ingests; a backfill of every source leaves out those that cannot
    re-read a window, and refuses them when they are named."""
    unknown = sorted(set(plan.sources) - set(specs))
    if unknown:
        raise ValueError(f"no source {', '.join(unknown)} in sources.yml (known: {', '.join(sorted(specs))})")
    chosen = [specs[name] for name in plan.sources] if plan.sources else list(specs.values())
    if plan.backfill is not None:
        refused = [s.name for s in chosen if s.kind not in BACKFILL_KINDS]
        if plan.sources and refused:
            raise ValueError(
                f"cannot backfill {', '.join(refused)}: only {' and '.join(BACKFILL_KINDS)} sources re-read a "
                "window of their cursor (files are loaded once by name, stream messages once acknowledged)"
            )
        chosen = [s for s in chosen if s.kind in BACKFILL_KINDS]
    return chosen


def _night(result: RunResult, plan: Plan, progress: RunProgress) -> None:
    settings = result.settings
    quiet_telemetry()
    configure_dlt()
    # dbt's profile reads the warehouse path from here, so dlt and dbt write to the same file.
    os.environ["DUSK_WAREHOUSE"] = str(settings.warehouse)
    started = time.monotonic()
    log.info("run %s started (%s)", run_id(result), result.mode, extra={"event": "run_started"})
    settings.warehouse.parent.mkdir(parents=True, exist_ok=True)
    try:
        specs = load_sources()
        check_dbt_sources(specs)
        check_schemas(settings.publish_schemas)
        chosen = _chosen(plan, specs)
        install_salt(settings)
        with duckdb.connect(str(settings.warehouse)) as con:
            ensure_ledger(con)
        if settings.demo:
            result.demo_created = ensure_demo(settings, specs)
    except Exception as exc:
        log.exception("run could not start")
        result.error = str(exc)
        _close(result, started)
        return
    with serve_payments_api(settings, specs) if settings.demo else nullcontext():
        result.sources = ingest_all(chosen, settings, progress, plan.window)
    if plan.backfill is not None:
        first, last = plan.backfill
        window: tuple[date, date] | None = (first, last + timedelta(days=1))
    else:
        window = loaded_event_window(settings, specs, result.sources)
    select = list(plan.select)
    if not select and (plan.sources or plan.backfill is not None):
        # what the ingested sources feed (a partial selection: the rest is left as it is)
        select = [f"source:{s.name}+" for s in chosen]
    # what depends on a source that failed tonight is left as it was (and reported), the rest is built
    skip = [f"source:{name}+" for name in result.failed_sources]
    progress.start("dbt", "dbt build, freshness, docs")
    result.dbt = run_dbt(
        settings,
        select=select,
        full_refresh=plan.full_refresh,
        event_window=window,
        exclude=skip,
        callbacks=[progress.dbt_callback("dbt")],
    )
    progress.finish("dbt", "ok" if result.dbt.ok else "FAILED")
    tests = result.dbt.tests()
    log.info(
        "dbt %s in %.1fs: %d nodes, %d tests failed",
        "ok" if result.dbt.ok else "failed",
        result.dbt.seconds,
        len(result.dbt.nodes),
        tests["fail"] + tests["error"],
        extra={"event": "dbt_ended", "status": "ok" if result.dbt.ok else "failed", "seconds": result.dbt.seconds},
    )
    if result.dbt.nodes:
        try:
            result.findings = monitor.check(result, specs)
        except Exception as exc:
            log.exception("monitoring failed")
            result.error = f"monitoring could not read the warehouse: {exc}"
    _close(result, started)


def _close(result: RunResult, started: float) -> None:
    """Record the run, publish it if it passed, alert, write the report."""
    settings = result.settings
    result.seconds = time.monotonic() - started
    record(result)  # the ledger (copied to readers too) says the publish is pending
    if result.publishable:
        try:
            result.published = publish(
                settings.warehouse, settings.served_path, settings.publish_schemas, run_id(result)
            )
        except PublishError as exc:
            log.error("%s", exc)
            result.publish_error = str(exc)
    elif result.dbt is not None:
        result.publish_error = "tonight did not pass (see above): readers keep the last published night"
    try:
        result.alert = alerts.send(result)
    except Exception as exc:  # an alert never changes the night's outcome
        log.exception("alert not sent")
        result.alert = AlertOutcome(False, f"alerting failed: {type(exc).__name__}")
    result.seconds = time.monotonic() - started
    record(result)
    try:
        result.report_path = write_report(settings, in_run=True)
    except Exception as exc:  # the report is a view of the ledger: its failure never fails the night
        log.exception("report not written")
        result.report_error = str(exc)
    write_run_record(result)
    log.info(
        "run %s ended %s in %.1fs",
        run_id(result),
        result.status,
        result.seconds,
        extra={"event": "run_ended", "status": result.status, "seconds": round(result.seconds, 2)},
    )


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


def ingest_all(
    specs: list[SourceSpec],
    settings: Settings,
    progress: RunProgress,
    window: tuple[datetime, datetime] | None = None,
) -> list[SourceResult]:
    """Ingest the sources, ``settings.parallel_sources`` at a time (dlt runs each pipeline in its
    own thread; they load into different schemas of the one DuckDB file). Results keep the
    order of sources.yml."""

    def one(spec: SourceSpec) -> SourceResult:
        progress.start(f"source:{spec.name}", f"ingest {spec.name}")
        result = ingest_with_retries(spec, settings, window)
        note = "skipped" if result.skipped else "ok" if result.ok else "FAILED"
        progress.finish(f"source:{spec.name}", note)
        log.info(
            "source=%s %s in %.1fs",
            spec.name,
            note,
            result.seconds,
            extra={
                "event": "source_ended",
                "source": spec.name,
                "status": note,
                "seconds": round(result.seconds, 2),
                "rows": sum(t.loaded for t in result.tables),
            },
        )
        return result

    if settings.parallel_sources <= 1 or len(specs) <= 1:
        return [one(spec) for spec in specs]
    # One DuckDB instance for every thread: DuckDB shares an open file's instance with later
    # connections of the same configuration (dlt's has none at connect time), but two threads
    # opening it at the same moment each create one, and the second fails ("already attached").
    with (
        duckdb.connect(str(settings.warehouse)),
        ThreadPoolExecutor(max_workers=settings.parallel_sources, thread_name_prefix="source") as pool,
    ):
        return list(pool.map(one, specs))


def ingest_with_retries(
    spec: SourceSpec, settings: Settings, window: tuple[datetime, datetime] | None = None
) -> SourceResult:
    """Ingest a source; a transient failure (the server briefly unreachable) is retried with
    exponential backoff and jitter, DUSK_SOURCE_ATTEMPTS times in all, then reported as failed.
    Each attempt starts with what the previous one left (pending load packages are finished)."""
    attempt, started = 1, time.monotonic()
    while True:
        result = ingest_source(spec, settings, window=window)
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
    """The days (first, last + 1) of the rows loaded, into tables that declare an `event_time`,
    since the last run whose dbt step succeeded started: dbt's microbatch models rebuild exactly
    those days, late events included. Not only tonight's loads: a run killed after loading and
    before dbt built those days leaves them to this one. None when there is no such row (dbt
    then uses each model's own lookback)."""
    spans = []
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        built = con.execute(
            f"select max(r.started_at) from {LEDGER}.runs r join {LEDGER}.steps s using (run_id) "
            "where s.step = 'dbt' and s.status = 'ok'"
        ).fetchone()
        since = built[0] if built and built[0] is not None else datetime(1970, 1, 1)
        for source in sources:
            spec = specs[source.source]
            for table in spec.tables:
                if not table.event_time:
                    continue
                span = con.execute(
                    f'select min(cast("{table.event_time}" as date)), max(cast("{table.event_time}" as date)) '
                    f'from "{spec.dataset}"."{table.name}" where _dlt_load_id in '
                    f'(select load_id from "{spec.dataset}"._dlt_loads where status = 0 and inserted_at >= ?)',
                    [since.replace(tzinfo=UTC)],
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
