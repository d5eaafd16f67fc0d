"""The night: prepare, ingest, build, audit, publish, alert, report, in this order.

This is the one place that lists the steps and decides what runs after what; it holds no SQL and
reads no environment. Each step is a module of :mod:`dusk.steps` that returns its part of the
record (:mod:`dusk.record`); the ledger is written as each step ends, and the JSON run record
once, at the end. The CLI turns the outcome into an exit code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dusk import ledger
from dusk.demo import serve_payments_api
from dusk.logfile import run_log
from dusk.progress import RunProgress
from dusk.record import Plan, RunResult
from dusk.settings import Settings, apply_runtime_environment
from dusk.steps.alert import alert, heartbeat, send
from dusk.steps.audit import audit
from dusk.steps.build import build, parse
from dusk.steps.diff import diff
from dusk.steps.ingest import ingest
from dusk.steps.lineage import lineage
from dusk.steps.metrics import metrics
from dusk.steps.prepare import Prepared, check_free_space, prepare
from dusk.steps.prune import prune
from dusk.steps.publish import publish
from dusk.steps.report import report
from dusk.steps.spec import nightly as spec_nightly
from dusk.warehouse import Warehouse, ensure_ledger, open_warehouse
from ingestion.declaration import SourceSpec
from ingestion.run import Connection

log = logging.getLogger(__name__)

NOT_WRITTEN = "the run ledger was not written"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)
"""What stops a night: a scheduler or a shutdown, Ctrl-C, and its own time limit (an alarm)."""
STOP_GRACE = 15.0
"""Seconds a stopped night waits for the running step to let go. dbt, stopped, waits for the
nodes it runs, and neither a DuckDB or Spark query nor a Python model can be cancelled: past the
grace the stop is recorded from another thread and the process ends."""


class Stopped(KeyboardInterrupt):
    """A signal (a scheduler's timeout, a shutdown, Ctrl-C) stopped the night. A KeyboardInterrupt,
    so that dbt, when it is running, cancels its queries as it does for Ctrl-C."""


class _StopRequest:
    """The signal received, if any: raised as :class:`Stopped` in the main thread at once, and
    again at the next step's start (dbt turns what it receives into a failed result). SIGALRM is
    the night's own time limit (DUSK_RUN_TIMEOUT), or a limit :meth:`expire` names."""

    signal: str | None = None
    expired: str | None = None
    installed = False
    """Whether the handler is installed (the night runs in the main thread): only then does a
    limit that :meth:`expire` names stop it."""

    def __init__(
        self, timeout: float | None = None, abandon: Callable[[str], None] | None = None, grace: float = STOP_GRACE
    ) -> None:
        self.timeout, self.abandon, self.grace = timeout, abandon, grace
        self._claim = threading.Lock()
        self.recorded = threading.Event()

    def __call__(self, signum: int, frame: object) -> None:
        if self.signal is None:
            name = signal.Signals(signum).name
            if name == "SIGALRM":
                name = self.expired or f"the time limit (DUSK_RUN_TIMEOUT={self.timeout:g} s)"
            self.signal = name
            if self.abandon is not None:
                threading.Thread(target=self._deadline, name="dusk-stop-grace", daemon=True).start()
            raise Stopped(self.signal)

    def claim(self) -> bool:
        """True once: for whoever records the stop (the main thread, or the grace's end)."""
        return self._claim.acquire(blocking=False)

    def _deadline(self) -> None:
        if self.recorded.wait(self.grace) or not self.claim():
            return
        log.error("the running step did not let go within %g s of the stop: recorded without it", self.grace)
        assert self.abandon is not None and self.signal is not None
        self.abandon(self.signal)

    def check(self) -> None:
        if self.signal is not None:
            raise Stopped(self.signal)

    def expire(self, limit: str) -> None:
        """Stop the night for the time limit ``limit`` (from any thread: the main thread gets it)."""
        self.expired = limit
        if self.installed:
            os.kill(os.getpid(), signal.SIGALRM)
        else:
            log.warning("%s: not stopped, the night does not run in the main thread", limit)


class _NodeClock:
    """A dbt event callback that keeps when each running node started, and a watcher that stops
    the night when one runs past ``limit`` seconds, naming it (DUSK_MODEL_TIMEOUT). dbt has no
    time limit of its own on DuckDB or Spark; on every engine, stopping is dbt's Ctrl-C path,
    which cancels the queries it can (PostgreSQL's), and the stopped night's process ends."""

    def __init__(self, limit: float | None, stop: _StopRequest) -> None:
        self.limit, self.stop = limit or 0.0, stop  # 0: no limit
        self.running: dict[str, float] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()

    def __call__(self, event: Any) -> None:
        name = event.info.name
        if self.limit and name in ("NodeStart", "NodeFinished"):
            node = event.data.node_info.unique_id
            with self._lock:
                if name == "NodeStart":
                    self.running[node] = time.monotonic()
                else:
                    self.running.pop(node, None)

    @contextmanager
    def watching(self) -> Iterator[None]:
        if not self.limit:
            yield
            return
        watcher = threading.Thread(target=self._watch, name="dusk-model-clock", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            self._done.set()
            watcher.join()

    def _watch(self) -> None:
        while not self._done.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = sorted(node for node, began in self.running.items() if now - began > self.limit)
            if late:
                self.stop.expire(
                    f"the model time limit (DUSK_MODEL_TIMEOUT={self.limit:g} s), reached by {', '.join(late)}"
                )
                return


@contextmanager
def _stoppable(request: _StopRequest) -> Iterator[_StopRequest]:
    """SIGTERM and SIGINT stop the night cleanly while the block runs, and so does the end of its
    time limit, the request's ``timeout`` seconds (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request) for sig in STOP_SIGNALS}
    request.installed = True
    if request.timeout:
        signal.setitimer(signal.ITIMER_REAL, request.timeout)
    try:
        yield request
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(
    settings: Settings,
    progress: RunProgress | None = None,
    plan: Plan | None = None,
    on_abandoned: Callable[[RunResult], None] | None = None,
) -> RunResult:
    """Run the whole night (or ``plan``) and return what happened; raises nothing for data or
    tool failures. A stopped night whose running step does not let go within :data:`STOP_GRACE`
    is recorded from another thread, which then calls ``on_abandoned`` (the CLI ends the process
    there, as the step cannot be waited for)."""
    plan = plan or Plan()
    record = RunResult(started_at=datetime.now(UTC), mode=plan.mode)
    apply_runtime_environment(settings)
    with run_log(settings.logs_dir / f"{record.run_id}.jsonl", record.run_id) as handler:
        record.log_path = handler.path
        started = time.monotonic()

        def abandon(sig: str) -> None:
            _record_stop(settings, record, sig, started)
            stop.recorded.set()
            if on_abandoned is not None:
                on_abandoned(record)

        stop = _StopRequest(settings.run_timeout, abandon)
        try:
            with _stoppable(stop):
                _night(settings, plan, record, progress or RunProgress(enabled=False), stop)
        except Stopped as exc:
            if stop.claim():
                _record_stop(settings, record, str(exc), started)
                stop.recorded.set()
            else:  # recorded at the grace's end, by the thread that ends the process
                stop.recorded.wait()
    return record


def _record_stop(settings: Settings, record: RunResult, sig: str, started: float) -> None:
    """A stopped night: recorded as ``stopped`` (ledger, run record), alerted and pinged, with no
    other signal let in meanwhile. Nothing of it is published; what a source or dbt left half done
    is finished or redone by the next night, as after a kill."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = {each: signal.signal(each, signal.SIG_IGN) for each in STOP_SIGNALS} if main else {}
    try:
        _write_stop(settings, record, sig, started)
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


def _write_stop(settings: Settings, record: RunResult, sig: str, started: float) -> None:
    record.stopped = sig
    if record.published is None:
        why = (
            "it ran out; make that model faster or raise the limit"
            if sig.startswith("the model time")
            else "it ran out; raise it or find the slow step in the log"
            if sig.startswith("the time")
            else "a scheduler's time limit, a shutdown or Ctrl-C"
        )
        record.error = record.error or f"stopped by {sig} ({why})"
    record.seconds = time.monotonic() - started
    log.error("run %s stopped by %s", record.run_id, sig, extra={"event": "run_stopped"})
    sent = record.alert is not None  # a stop after the alert step: that night was alerted already
    with _guarded(record, NOT_WRITTEN), open_warehouse(settings).connect() as con:
        ledger.close_run(con, record)
        if not sent:
            record.alert = alert(settings, con, record)
    if record.alert is None:  # the warehouse could not be opened: alert all the same
        record.alert = send(settings, record)
    record.heartbeat = heartbeat(settings, record)
    record.metrics = metrics(settings, record)
    write_run_record(settings, record)


def _night(settings: Settings, plan: Plan, record: RunResult, progress: RunProgress, stop: _StopRequest) -> None:
    started = time.monotonic()
    log.info("run %s started (%s)", record.run_id, record.mode, extra={"event": "run_started"})
    with _guarded(record, "the night could not start"):
        check_free_space(settings)
    warehouse = open_warehouse(settings)
    if record.error is None:
        with _guarded(record, f"the warehouse ({warehouse.describe()}) failed"), warehouse.connect() as con:
            _in_warehouse(settings, plan, record, progress, stop, warehouse, con, started)
    if record.alert is None:  # the disk is full, or the warehouse could not be opened: alert all the same
        record.alert = send(settings, record)
    record.seconds = time.monotonic() - started
    record.heartbeat = heartbeat(settings, record)  # also when the warehouse failed: then /fail
    record.metrics = metrics(settings, record)
    write_run_record(settings, record)
    log.info(
        "run %s ended %s in %.1fs",
        record.run_id,
        record.status,
        record.seconds,
        extra={"event": "run_ended", "status": record.status, "seconds": round(record.seconds, 2)},
    )


def _in_warehouse(
    settings: Settings,
    plan: Plan,
    record: RunResult,
    progress: RunProgress,
    stop: _StopRequest,
    warehouse: Warehouse,
    con: Any,
    started: float,
) -> None:
    ensure_ledger(con)
    ledger.open_run(con, record)
    prepared: Prepared | None = None
    with _guarded(record, "the night could not start"):
        prepared = prepare(settings, con, plan, record)
    stop.check()
    if prepared is not None and record.error is None:
        # dbt parses the project while the sources load: the parse reads neither the sources nor
        # the warehouse (prepare wrote the sources' YAML). Measured at 1x: 5.9 s on a first night
        # (no partial parse yet), 1.2 s on the others, off the night's critical path
        parsing = ThreadPoolExecutor(1, thread_name_prefix="dbt-parse")
        parsed = parsing.submit(parse, settings)
        try:
            with _demo_endpoints(settings, prepared.specs) as served:
                record.sources = ingest(
                    settings,
                    warehouse.target(),
                    prepared.chosen,
                    {**prepared.connections, **served},
                    plan.window,
                    on_start=lambda name: progress.start(f"source:{name}", f"ingest {name}"),
                    on_end=lambda result: progress.finish(f"source:{result.source}", result.status),
                )
            with _guarded(record, NOT_WRITTEN):
                ledger.ingested(con, record, record.sources)
            warehouse.after_ingest(con)
            stop.check()
            progress.start("dbt", "dbt build, freshness, docs")
            clock = _NodeClock(settings.model_timeout, stop)
            with clock.watching():
                callbacks = [progress.dbt_callback("dbt"), clock]
                dbt = record.dbt = build(settings, con, plan, record, prepared.specs, callbacks, parsed.result)
        finally:
            parsing.shutdown(wait=False)
        progress.finish("dbt", "ok" if dbt.ok else "FAILED")
        stop.check()
        with _guarded(record, NOT_WRITTEN):
            ledger.built(con, record, dbt)
        if dbt.nodes:
            with _guarded(record, "monitoring could not read the warehouse"):
                record.findings = audit(settings, con, record)
            stop.check()
            with _guarded(record, "the data diff failed"):
                record.diff = diff(settings, warehouse.engine, con, record)
    record.seconds = time.monotonic() - started
    stop.check()
    with _guarded(record, "the publish step failed"):
        publish(settings, warehouse, con, record)
    record.alert = alert(settings, con, record)
    record.seconds = time.monotonic() - started
    with _guarded(record, NOT_WRITTEN):
        ledger.close_run(con, record)
    report(settings, con, record)
    specs = prepared.specs if prepared is not None else {}
    record.lineage = _lineage(settings, con, record, specs)
    record.spec = _spec(settings, con, specs)
    if prepared is not None:
        _prune(settings, prepared.specs, con)


def _lineage(settings: Settings, con: Any, record: RunResult, specs: dict[str, SourceSpec]) -> str:
    """The night's OpenLineage events: what went wrong is logged and named, never the night's."""
    try:
        return lineage(settings, con, record, specs, datetime.now(UTC))
    except Exception as exc:
        log.warning("the lineage events were not emitted", exc_info=True)
        return f"not emitted ({type(exc).__name__}: {exc})"


def _spec(settings: Settings, con: Any, specs: dict[str, SourceSpec]) -> str | None:
    """The pipeline's specification as of tonight: a failure is logged and named, never the night's."""
    if not specs:
        return None
    try:
        return spec_nightly(settings, con, specs)
    except Exception as exc:
        log.warning("the pipeline's specification was not written", exc_info=True)
        return f"not written ({type(exc).__name__}: {exc})"


def _prune(settings: Settings, specs: dict[str, SourceSpec], con: Any) -> None:
    """Retention, after the night is recorded: a failure is logged, never the night's."""
    try:
        prune(settings, specs, con)
    except Exception:
        log.warning("pruning old run records, logs, packages or ledger rows failed", exc_info=True)


def _demo_endpoints(settings: Settings, specs: dict[str, SourceSpec]) -> AbstractContextManager[dict[str, Connection]]:
    """The demo's payments API, served for the ingest step (nothing outside demo mode)."""
    if settings.demo:
        return serve_payments_api(settings, specs)
    none: dict[str, Connection] = {}
    return nullcontext(none)


@contextmanager
def _guarded(record: RunResult, what: str) -> Iterator[None]:
    """A failure in the block fails the night and is named (the first one), but never loses the
    record: the night goes on to record, alert and report what it can."""
    try:
        yield
    except Exception as exc:
        log.exception("%s", what)
        if record.error is None:
            record.error = f"{what}: {exc}"


def write_run_record(settings: Settings, record: RunResult) -> Path | None:
    """Write the run as JSON to <data dir>/runs/<run id>.json and last_run.json, each whole or
    not at all (a full disk leaves the earlier last_run.json and no partial file, and is named
    in the run's error); None when it could not be written."""
    runs = settings.data_dir / "runs"
    fields = {"run_id": record.run_id, "ok": record.ok, "status": record.status, **asdict(record)}
    text = json.dumps(fields, indent=2, default=str)
    path = runs / f"{record.run_id}.json"
    tmp = runs / f".{record.run_id}.json.tmp"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        shutil.copyfile(tmp, runs / ".last_run.json.tmp")
        tmp.replace(path)
        (runs / ".last_run.json.tmp").replace(runs / "last_run.json")
    except OSError as exc:
        for partial in (tmp, runs / ".last_run.json.tmp"):
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        log.error("the run record was not written: %s", exc)
        record.error = record.error or f"the run record was not written to {runs}: {exc.strerror or exc}"
        return None
    return path
