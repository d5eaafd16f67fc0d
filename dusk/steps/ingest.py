"""The ingest step: every chosen source into its ``raw_<source>`` dataset, a few at a time, each
retried on a transient failure (ingestion's rule, :func:`ingestion.errors.is_transient`)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import tenacity

from dusk.settings import Settings
from ingestion.declaration import SourceSpec
from ingestion.result import SourceResult
from ingestion.run import Connection, Target, ingest_source

log = logging.getLogger(__name__)

MAX_PAUSE = 60.0
"""The longest pause between two attempts of a source, in seconds."""


def ingest(
    settings: Settings,
    target: Target,
    specs: list[SourceSpec],
    connections: dict[str, Connection],
    window: tuple[datetime, datetime] | None = None,
    on_start: Callable[[str], None] = lambda name: None,
    on_end: Callable[[SourceResult], None] = lambda result: None,
) -> list[SourceResult]:
    """Ingest the sources, ``settings.parallel_sources`` at a time (dlt runs each pipeline in its
    own thread; they load into different schemas of the one warehouse, whose connection the night
    holds, so every thread shares its instance). Results keep the order of sources.yml."""

    def one(spec: SourceSpec) -> SourceResult:
        on_start(spec.name)
        began = datetime.now(UTC)
        result = ingest_with_retries(spec, settings, target, connections.get(spec.name), window)
        result.started_at = began
        on_end(result)
        log.info(
            "source=%s %s in %.1fs",
            spec.name,
            result.status,
            result.seconds,
            extra={
                "event": "source_ended",
                "source": spec.name,
                "status": result.status,
                "seconds": round(result.seconds, 2),
                "rows": result.rows_loaded,
            },
        )
        return result

    if not settings.source_timeout and (settings.parallel_sources <= 1 or len(specs) <= 1):
        return [one(spec) for spec in specs]
    return _in_threads(specs, one, max(1, settings.parallel_sources), settings.source_timeout, on_end)


def _in_threads(
    specs: list[SourceSpec],
    one: Callable[[SourceSpec], SourceResult],
    parallel: int,
    limit: float | None,
    on_end: Callable[[SourceResult], None],
) -> list[SourceResult]:
    """Run ``one`` for each source in its own daemon thread, ``parallel`` at a time; a source still
    running ``limit`` seconds after it started (DUSK_SOURCE_TIMEOUT) is given up: failed, named,
    its slot freed for the next source, its thread left behind (a thread blocked in a driver
    cannot be stopped; the process ends without waiting for it). A thread pool would wait for
    it, and its queued sources behind it."""
    results: dict[str, SourceResult] = {}
    done: queue.Queue[tuple[str, SourceResult | BaseException]] = queue.Queue()
    slots = threading.Semaphore(parallel)
    began: dict[str, float] = {}
    freed: set[str] = set()
    lock = threading.Lock()

    def free(name: str) -> None:
        with lock:
            if name not in freed:
                freed.add(name)
                slots.release()

    def run(spec: SourceSpec) -> None:
        try:
            done.put((spec.name, one(spec)))
        except BaseException as exc:  # handed to the main thread, which raises it
            done.put((spec.name, exc))
        finally:
            free(spec.name)

    waiting = list(specs)
    while len(results) < len(specs):
        while waiting and slots.acquire(blocking=False):
            spec = waiting.pop(0)
            began[spec.name] = time.monotonic()
            threading.Thread(target=run, args=(spec,), name=f"source-{spec.name}", daemon=True).start()
        try:
            name, outcome = done.get(timeout=0.25)
        except queue.Empty:
            pass
        else:
            if isinstance(outcome, BaseException):
                raise outcome
            results.setdefault(name, outcome)  # a source given up keeps its failed result
        now = time.monotonic()
        for spec in specs:
            if limit and spec.name in began and spec.name not in results and now - began[spec.name] > limit:
                results[spec.name] = SourceResult(
                    spec.name,
                    ok=False,
                    seconds=now - began[spec.name],
                    error=f"source {spec.name!r} ran past its time limit (DUSK_SOURCE_TIMEOUT={limit:g} s) and "
                    "was given up; what it had loaded stays in raw, the next night goes on from there",
                    abandoned=True,
                )
                log.error("source=%s given up after %.0fs (DUSK_SOURCE_TIMEOUT)", spec.name, now - began[spec.name])
                on_end(results[spec.name])
                free(spec.name)
    return [results[spec.name] for spec in specs]


def ingest_with_retries(
    spec: SourceSpec,
    settings: Settings,
    target: Target,
    connection: Connection | None = None,
    window: tuple[datetime, datetime] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SourceResult:
    """Ingest a source; a transient failure (the server briefly unreachable) is retried with
    exponential backoff (``source_backoff`` seconds, doubled each time, at most a minute) plus up
    to ``source_backoff`` seconds of jitter, ``settings.source_attempts`` times in all, then reported
    as failed. Each attempt starts with what the previous one left (pending load packages are
    finished)."""
    started = time.monotonic()

    def attempt() -> SourceResult:
        return ingest_source(spec, target, connection, window=window, detected_at=settings.detected_at)

    def retried(state: tenacity.RetryCallState) -> None:
        result = state.outcome.result() if state.outcome else None
        log.warning(
            "source=%s attempt=%d of %d failed (transient), retrying in %.1fs: %s",
            spec.name,
            state.attempt_number,
            settings.source_attempts,
            state.upcoming_sleep,
            result.error if result else "",
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(settings.source_attempts),
        wait=tenacity.wait_exponential_jitter(
            multiplier=settings.source_backoff, max=MAX_PAUSE, jitter=settings.source_backoff
        ),
        retry=tenacity.retry_if_result(lambda r: not r.ok and r.transient),
        before_sleep=retried,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        reraise=False,
        sleep=sleep,
    )
    result: SourceResult = retrying(attempt)
    result.attempts = retrying.statistics.get("attempt_number", 1)
    result.seconds = time.monotonic() - started  # every attempt and pause
    return result
