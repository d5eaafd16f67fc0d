"""The build step: dbt build (models, snapshots, seeds, tests), source freshness and docs, in-process.

dbt is parsed once and the manifest is handed to the following invocations, so a night pays dbt's
start-up cost once. Results are read from dbt's result objects, never from its text output.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dbt.cli.main import dbtRunner
from dbt.contracts.graph.manifest import Manifest

from dusk import ledger
from dusk.record import DbtResult, NodeResult, Plan, RunResult
from dusk.settings import PROJECT_DIR, Settings
from dusk.warehouse import table_names
from ingestion.declaration import SourceSpec
from ingestion.result import SourceResult

PROFILES_DIR = PROJECT_DIR / "profiles"


def _layer(node: Any) -> str:
    if node.resource_type == "model" and len(node.fqn) > 2:
        return str(node.fqn[1])
    return str(node.resource_type)


def _collect(results: Any) -> list[NodeResult]:
    out = []
    for r in getattr(results, "results", None) or []:
        node = r.node
        out.append(
            NodeResult(
                unique_id=node.unique_id,
                name=node.name,
                resource_type=str(node.resource_type),
                layer=_layer(node),
                status=str(r.status),
                seconds=float(r.execution_time or 0.0),
                failures=r.failures,
                message=r.message if str(r.status) in ("fail", "error", "warn", "runtime error") else None,
                failures_table=getattr(node, "relation_name", None) if str(r.status) in ("fail", "warn") else None,
                rows_affected=_rows(getattr(r, "adapter_response", None)),
            )
        )
    return out


def _executing(results: Any) -> list[tuple[datetime, datetime]]:
    """When each node's SQL ran (dbt's ``execute`` timing)."""
    spans = []
    for r in getattr(results, "results", None) or []:
        for timing in getattr(r, "timing", None) or []:
            if timing.name == "execute" and timing.started_at and timing.completed_at:
                spans.append((timing.started_at, timing.completed_at))
    return spans


def busy_seconds(spans: list[tuple[datetime, datetime]]) -> float:
    """The length of the union of ``spans``: with threads, nodes run at once and their times
    overlap, so a sum would count the same seconds twice."""
    total, end = 0.0, None
    for start, stop in sorted(spans):
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


def _rows(response: Any) -> int | None:
    value = response.get("rows_affected") if isinstance(response, dict) else None
    return int(value) if isinstance(value, int) and value >= 0 else None


def dbt_args(settings: Settings, *args: str) -> list[str]:
    """Common flags: this project, its profiles, and the configured target path."""
    return [
        *args,
        "--log-level",
        "warn",  # the runner prints the summary; dbt's own log goes to logs/dbt.log
        "--log-level-file",
        "info",
        "--project-dir",
        str(PROJECT_DIR),
        "--profiles-dir",
        str(PROFILES_DIR),
        "--target-path",
        str(settings.target_path),
    ]


def parse(settings: Settings) -> tuple[Manifest | None, str | None]:
    """Parse the project once (the night's later invocations reuse the manifest); the error
    instead when dbt cannot parse it."""
    parsed = dbtRunner().invoke(dbt_args(settings, "parse"))
    if not parsed.success:
        return None, f"dbt parse failed: {parsed.exception or 'see the dbt log'}"
    return (parsed.result if isinstance(parsed.result, Manifest) else None), None


def run_dbt(
    settings: Settings,
    manifest: Manifest | None,
    select: list[str] | None = None,
    full_refresh: bool = False,
    event_window: tuple[date, date] | None = None,
    exclude: list[str] | None = None,
    callbacks: list[Any] | None = None,
) -> DbtResult:
    """Run build, source freshness and docs generate on the parsed ``manifest``; dbt's own
    failures are captured, not raised.

    ``event_window`` (first day, day after the last) is handed to microbatch models as
    ``--event-time-start/--event-time-end``: they rebuild those days instead of their lookback.
    ``exclude`` leaves nodes out of the build (the descendants of sources that failed tonight).
    ``callbacks`` receive dbt's events (the progress bar counts finished nodes)."""
    started = time.monotonic()
    result = DbtResult(ok=False, seconds=0.0)
    runner = dbtRunner(manifest=manifest, callbacks=callbacks or [])
    build_args = ["build"]
    if select:
        build_args += ["--select", *select]
    if exclude:
        build_args += ["--exclude", *exclude]
    if full_refresh:
        build_args.append("--full-refresh")
    if event_window is not None:
        start, end = event_window
        build_args += ["--event-time-start", start.isoformat(), "--event-time-end", end.isoformat()]
    build = runner.invoke(dbt_args(settings, *build_args))
    result.nodes = _collect(build.result)
    if build.exception is not None:
        result.error = f"dbt build did not complete: {build.exception}"

    freshness = runner.invoke(dbt_args(settings, "source", "freshness"))
    result.freshness = _collect(freshness.result)
    if freshness.exception is not None and result.error is None:
        result.error = f"dbt source freshness did not complete: {freshness.exception}"

    # the build compiled the shared manifest's nodes already: the docs show that SQL. Docs that
    # fail are reported; they never keep data that passed every test from readers.
    docs = runner.invoke(dbt_args(settings, "docs", "generate", "--static", "--no-compile"))
    if docs.success:
        result.docs_path = settings.docs_path
    else:
        result.docs_error = f"dbt docs generate failed: {docs.exception or 'see the dbt log'}"

    result.sql_seconds = busy_seconds(_executing(build.result) + _executing(freshness.result))
    stale = [f for f in result.freshness if f.status in ("error", "runtime error")]
    result.ok = build.success and not stale and result.error is None
    result.seconds = time.monotonic() - started
    return result


def build(
    settings: Settings,
    con: Any,
    plan: Plan,
    record: RunResult,
    specs: dict[str, SourceSpec],
    callbacks: list[Any] | None = None,
) -> DbtResult:
    """The build step: what tonight's sources feed (everything by default), microbatch models
    over the days that received rows, and nothing that depends on a source that failed tonight
    (it is left as it was, and reported)."""
    started = time.monotonic()
    manifest, error = parse(settings)
    if error is not None:
        return DbtResult(ok=False, seconds=time.monotonic() - started, error=error)
    if plan.backfill is not None:
        first, last = plan.backfill
        window: tuple[date, date] | None = (first, last + timedelta(days=1))
    else:
        # a microbatch table the warehouse lacks (a new model, a warehouse just moved) is built
        # from every loaded day, as on a new installation, not from tonight's alone
        whole = manifest is not None and any(not _exists(con, node) for node in _microbatch(manifest))
        window = loaded_event_window(con, specs, record.sources, None if whole else ledger.last_built(con))
    select = list(plan.select)
    if not select and (plan.sources or plan.backfill is not None):
        # what the ingested sources feed (a partial selection: the rest is left as it is)
        select = [f"source:{s.source}+" for s in record.sources]
    skip = [f"source:{name}+" for name in record.failed_sources]
    result = run_dbt(
        settings,
        manifest,
        select=select,
        full_refresh=plan.full_refresh,
        event_window=window,
        exclude=skip,
        callbacks=callbacks,
    )
    if manifest is not None:
        result.freshness_limits = freshness_limits(manifest, specs)
        if not result.ok and result.error is None:
            result.withheld, result.withheld_relations = isolate(manifest, result)
    result.seconds = time.monotonic() - started
    return result


def isolate(manifest: Manifest, result: DbtResult) -> tuple[dict[str, list[str]], list[str]]:
    """What tonight's dbt failures trace back to: for every failing test, erroring node and
    source table whose freshness errored, the sources it is built from; then every relation
    those sources feed. Empty when a failure traces back to no source (a seed's model, a
    macro): then nothing can be told apart and the night fails whole."""
    parents = manifest.parent_map or {}
    children = manifest.child_map or {}
    failed = [n for n in result.nodes if n.status in ("fail", "error", "runtime error")]
    failed += [f for f in result.freshness if f.status in ("error", "runtime error")]
    guilty: dict[str, list[str]] = {}
    for node in failed:
        sources = sorted(
            {manifest.sources[u].source_name for u in _closure(node.unique_id, parents) if u in manifest.sources}
        )
        if not sources:
            return {}, []
        what = "stale" if node.unique_id in manifest.sources else f"{node.resource_type} {node.name} {node.status}"
        for name in sources:
            guilty.setdefault(name, []).append(what)
    relations = set()
    for unique_id, source in manifest.sources.items():
        if source.source_name not in guilty:
            continue
        for fed in _closure(unique_id, children):
            built = manifest.nodes.get(fed)
            kind = str(getattr(built, "resource_type", ""))
            if built is not None and kind in ("model", "snapshot", "seed") and built.config.materialized != "ephemeral":
                relations.add(f"{built.schema}.{built.alias}")
    return guilty, sorted(relations)


def _closure(start: str, edges: dict[str, list[str]]) -> set[str]:
    """``start`` and everything reachable from it along ``edges``."""
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges.get(todo.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


_PERIOD_HOURS = {"minute": 1 / 60, "hour": 1.0, "day": 24.0}


def freshness_limits(manifest: Manifest, specs: dict[str, SourceSpec]) -> dict[str, tuple[float | None, float | None]]:
    """Each declared source's freshness limits in hours, (warn, error), read from dbt, their one
    home (dbt_project.yml, or the source's own _<source>__sources.yml): the strictest over its
    tables. The audit's ``freshness_sla`` finding and ``dbt source freshness`` measure the same."""

    def hours(after: Any) -> float | None:
        if after is None or after.count is None or after.period is None:
            return None
        return float(after.count) * _PERIOD_HOURS[str(getattr(after.period, "value", after.period))]

    def strictest(a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else min(a, b)

    limits: dict[str, tuple[float | None, float | None]] = {}
    for node in manifest.sources.values():
        if node.source_name not in specs or node.freshness is None:
            continue
        warn, error = hours(node.freshness.warn_after), hours(node.freshness.error_after)
        if warn is None and error is None:
            continue
        had_warn, had_error = limits.get(node.source_name, (None, None))
        limits[node.source_name] = (strictest(had_warn, warn), strictest(had_error, error))
    return limits


def _microbatch(manifest: Manifest) -> list[Any]:
    """The project's microbatch models."""
    return [
        node
        for node in manifest.nodes.values()
        if node.resource_type == "model" and node.config.get("incremental_strategy") == "microbatch"
    ]


def _exists(con: Any, node: Any) -> bool:
    """Whether the warehouse holds the model's relation."""
    return (node.alias or node.name) in table_names(con, node.schema)


def loaded_event_window(
    con: Any, specs: dict[str, SourceSpec], sources: list[SourceResult], since: datetime | None
) -> tuple[date, date] | None:
    """The days (first, last + 1) of the rows loaded, into tables that declare an `event_time`,
    since the last run whose dbt step succeeded started (``since``; None: ever): dbt's microbatch
    models rebuild exactly those days, late events included. Not only tonight's loads: a run
    killed after loading and before dbt built those days leaves them to this one. None when there
    is no such row (dbt then uses each model's own lookback)."""
    since = since or datetime(1970, 1, 1, tzinfo=UTC)
    spans = []
    for source in sources:
        spec = specs[source.source]
        for table in spec.tables:
            if not table.event_time:
                continue
            # a load id is its package's creation time (Unix epoch): packages created since ``since``
            # (a killed run's package finished later is newer than the run that last built)
            span = con.execute(
                f'select min(cast("{table.event_time}" as date)), max(cast("{table.event_time}" as date)) '
                f'from "{spec.dataset}"."{table.name}" where cast(_dlt_load_id as double precision) >= ?',
                [since.timestamp()],
            ).fetchone()
            if span and span[0] is not None:
                spans.append(span)
    if not spans:
        return None
    return min(s[0] for s in spans), max(s[1] for s in spans) + timedelta(days=1)
