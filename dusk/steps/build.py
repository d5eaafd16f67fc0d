"""The build step: dbt build (models, snapshots, seeds, tests), source freshness and docs, in-process.

dbt is parsed once and the manifest is handed to the following invocations, so a night pays dbt's
start-up cost once. Results are read from dbt's result objects, never from its text output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dusk import ledger
from dusk.record import UNCHANGED, DbtResult, NodeResult, Plan, RunResult
from dusk.settings import PROD, PROJECT_DIR, Settings, prod_attachment
from dusk.steps import changes
from dusk.warehouse import table_names
from ingestion.declaration import SourceSpec
from ingestion.result import SourceResult

if TYPE_CHECKING:
    from dbt.contracts.graph.manifest import Manifest

PROFILES_DIR = PROJECT_DIR / "profiles"
log = logging.getLogger(__name__)


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
                age_seconds=_age(r),
                started_at=_when(r, min),
                completed_at=_when(r, max),
            )
        )
    return out


def _age(result: Any) -> float | None:
    """A freshness result's age in seconds (None for any other result, or a check that errored)."""
    age = getattr(result, "age", None)
    return float(age) if isinstance(age, int | float) else None


def _when(result: Any, pick: Callable[[list[datetime]], datetime]) -> datetime | None:
    """The first start (``min``) or the last end (``max``) of a result's timings, UTC."""
    times = [
        t for timing in getattr(result, "timing", None) or [] for t in (timing.started_at, timing.completed_at) if t
    ]
    if not times:
        return None
    at = pick(times)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


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
    # dbt is imported here, not with this module: its import takes ~1 s, which the night's
    # parse thread spends while the sources load (a quiet night builds nothing after them)
    from dbt.cli.main import dbtRunner
    from dbt.contracts.graph.manifest import Manifest

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
    state: Path | None = None,
    docs: Callable[[list[NodeResult]], bool] | None = None,
    defer: bool = False,
    idle: bool = False,
) -> DbtResult:
    """Run build, source freshness and docs generate on the parsed ``manifest``; dbt's own
    failures are captured, not raised.

    ``event_window`` (first day, day after the last) is handed to microbatch models as
    ``--event-time-start/--event-time-end``: they rebuild those days instead of their lookback.
    ``exclude`` leaves nodes out of the build (the descendants of sources that failed tonight).
    ``callbacks`` receive dbt's events (the progress bar counts finished nodes). ``state``: the
    saved manifest a ``state:`` selector compares with (and, with ``defer``, where what is not
    selected is read). ``docs``: given what the build ran, whether the docs need generating
    again (default: always). ``idle``: nothing is to be built; no ``dbt build`` runs."""
    started = time.monotonic()
    result = DbtResult(ok=False, seconds=0.0)
    from dbt.cli.main import dbtRunner

    runner = dbtRunner(manifest=manifest, callbacks=callbacks or [])
    build_args = ["build"]
    if select:
        build_args += ["--select", *select]
    if state is not None:
        build_args += ["--state", str(state)]
    if defer:
        build_args.append("--defer")
    if exclude:
        build_args += ["--exclude", *exclude]
    if full_refresh:
        build_args.append("--full-refresh")
    if event_window is not None:
        start, end = event_window
        build_args += ["--event-time-start", start.isoformat(), "--event-time-end", end.isoformat()]
    built_ok, spans = True, list[tuple[datetime, datetime]]()
    if not idle:
        build = runner.invoke(dbt_args(settings, *build_args, "--no-write-json"))
        result.nodes = _collect(build.result)
        _write_results(settings, build.result, "run_results.json")
        built_ok, spans = build.success, _executing(build.result)
        if build.exception is not None:
            result.error = f"dbt build did not complete: {build.exception}"

    freshness = runner.invoke(dbt_args(settings, "source", "freshness", "--no-write-json"))
    result.freshness = _collect(freshness.result)
    _write_results(settings, freshness.result, "sources.json")
    if freshness.exception is not None and result.error is None:
        result.error = f"dbt source freshness did not complete: {freshness.exception}"

    # the build compiled the shared manifest's nodes already: the docs show that SQL. Docs that
    # fail are reported; they never keep data that passed every test from readers.
    if docs is None or docs(result.nodes) or not settings.docs_path.exists():
        generated = runner.invoke(dbt_args(settings, "docs", "generate", "--static", "--no-compile"))
        if generated.success:
            result.docs_path = settings.docs_path
        else:
            result.docs_error = f"dbt docs generate failed: {generated.exception or 'see the dbt log'}"
    else:  # nothing the docs show changed: last night's are tonight's
        result.docs_path = settings.docs_path

    result.sql_seconds = busy_seconds(spans + _executing(freshness.result))
    stale = [f for f in result.freshness if f.status in ("error", "runtime error")]
    result.ok = built_ok and not stale and result.error is None
    result.seconds = time.monotonic() - started
    return result


def _write_results(settings: Settings, results: Any, name: str) -> None:
    """dbt's results artifact (``run_results.json``, ``sources.json``) in the target path, for the
    tools that read it. Invocations run with ``--no-write-json``: dbt would write the whole
    ``manifest.json`` again after each (0.4 s a time on the demo, measured), though the parse
    wrote it and nothing since changed what it holds but compiled SQL (in ``target/compiled``)."""
    write = getattr(results, "write", None)
    if callable(write):
        write(str(settings.target_path / name))


def build(
    settings: Settings,
    con: Any,
    plan: Plan,
    record: RunResult,
    specs: dict[str, SourceSpec],
    callbacks: list[Any] | None = None,
    parsed: Callable[[], tuple[Manifest | None, str | None]] | None = None,
) -> DbtResult:
    """The build step: what changed since the nights before and everything downstream of it
    (everything with ``--full``, on a first night, or when the weekly full night is due; see
    :mod:`dusk.steps.changes`), microbatch models over the days that received rows, and nothing
    that depends on a source that failed tonight (it is left as it was, and reported). Nodes left
    as they were are reported as ``unchanged``. ``parsed`` gives :func:`parse`'s result when the
    caller started the parse earlier."""
    started = time.monotonic()
    manifest, error = parsed() if parsed is not None else parse(settings)
    if error is not None or manifest is None:
        return DbtResult(ok=False, seconds=time.monotonic() - started, error=error or "dbt parse returned no manifest")
    if plan.backfill is not None:
        first, last = plan.backfill
        window: tuple[date, date] | None = (first, last + timedelta(days=1))
    else:
        # a microbatch table the warehouse lacks (a new model, a warehouse just moved) is built
        # from every loaded day, as on a new installation, not from tonight's alone
        whole = any(not _exists(con, node) for node in _microbatch(manifest))
        window = loaded_event_window(con, specs, record.sources, None if whole else ledger.last_built(con))
    state = changes.load(settings.state_dir, settings.warehouse_label)
    prints = changes.fingerprints(con, manifest, {spec.dataset for spec in specs.values()})
    project = changes.project_key()
    chosen = changes.Selection(select=list(plan.select), state=None, full=False)
    catalog: list[str | None] = []  # what tonight's docs show of the warehouse, when generated
    read_catalog = partial(changes.catalog_key, con, settings.target, manifest)
    if plan.defer:
        deferred = _deferred(settings, manifest, chosen.select)
        if isinstance(deferred, str):
            return DbtResult(ok=False, seconds=time.monotonic() - started, error=deferred)
        chosen = deferred
    elif plan.select or plan.sources or plan.backfill is not None:
        if not chosen.select:  # what the ingested sources feed (the rest is left as it is)
            chosen.select = [f"source:{s.source}+" for s in record.sources]
        if any("state:" in s for s in chosen.select):
            chosen.state = state.manifest
    else:
        chosen = changes.select(
            manifest,
            state,
            prints,
            lambda: _relations(con, manifest),
            full=plan.full or plan.full_refresh,
            full_every=settings.full_build_every,
            project=project,
        )
        _log_selection(chosen, manifest)
    skip = [f"source:{name}+" for name in record.failed_sources]
    result = run_dbt(
        settings,
        manifest,
        select=chosen.select,
        full_refresh=plan.full_refresh,
        event_window=window,
        exclude=skip,
        callbacks=callbacks,
        state=chosen.state,
        defer=plan.defer,
        docs=lambda ran: _docs_needed(ran, chosen, state, project, catalog, read_catalog),
        idle=chosen.idle,
    )
    left_out = _fed_by(manifest, record.failed_sources)
    if result.error is None:  # dbt ran to its end: what it built is recorded
        _save_state(settings, record, manifest, state, prints, result, left_out, chosen, plan, project, catalog)
    ran = {n.unique_id for n in result.nodes}
    kept = changes.unchanged(manifest, state, ran, left_out)
    result.nodes += [_unchanged(manifest.nodes.get(u) or manifest.unit_tests[u]) for u in kept]
    result.full = chosen.full
    result.freshness_limits = freshness_limits(manifest, specs)
    if not result.ok and result.error is None:
        result.withheld, result.withheld_relations = isolate(manifest, result)
    result.seconds = time.monotonic() - started
    return result


def _deferred(settings: Settings, manifest: Manifest, select: list[str]) -> changes.Selection | str:
    """A run outside prod that reads what it does not build from prod's published data: ``select``
    against prod's last manifest (dbt's ``--defer --state``), and every unpublished model
    (the intermediate models): readers' copy lacks them, and what is built or tested may read any
    of them. The reason instead when it cannot defer."""
    if settings.env == PROD or settings.prod_warehouse is None:
        return "--defer reads prod's published data from another environment: run it with --env dev (or ci)"
    if settings.target != "duckdb":
        return (
            f"--defer is for DuckDB environments: on {settings.target} each environment is a database or "
            "catalog of its own, which dbt's deferral cannot read across; build the environment whole instead"
        )
    prod = changes.load(settings.prod_state_dir, str(settings.prod_warehouse))
    if prod.manifest is None or not prod_attachment(settings):
        return (
            f"--defer needs prod's last night ({settings.prod_state_dir}) and its published data "
            f"({settings.prod_served}): run a night in prod first"
        )
    from dbt.node_types import NodeType

    published = set(settings.publish_schemas)
    unpublished = sorted(
        {
            f"config.schema:{node.config.schema}" if node.config.schema else node.name
            for node in manifest.nodes.values()
            if node.resource_type == NodeType.Model
            and node.schema not in published
            and node.config.materialized != "ephemeral"
        }
    )
    log.info("deferring to prod's night %s; building %s", prod.manifest.name, " ".join(select + unpublished))
    return changes.Selection(select=select + unpublished, state=prod.manifest, full=False)


def _save_state(
    settings: Settings,
    record: RunResult,
    manifest: Manifest,
    state: changes.BuildState,
    prints: dict[str, str | None],
    result: DbtResult,
    left_out: set[str],
    chosen: changes.Selection,
    plan: Plan,
    project: str,
    catalog: list[str | None],
) -> None:
    """Record what tonight built. Tonight's manifest becomes the one ``state:modified`` compares
    with only after a night that selected everything it changed (not a chosen selection, a
    backfill or some sources only: a changed node they left out stays changed). ``project``: the
    dbt project's :func:`changes.project_key`, and ``catalog`` the warehouse's
    :func:`changes.catalog_key` when tonight generated the docs (else last night's docs stand)."""
    built = changes.record(manifest, state, prints, [(n.unique_id, n.status) for n in result.nodes], left_out)
    built.warehouse = settings.warehouse_label
    whole_night = not (plan.select or plan.sources or plan.backfill is not None)
    if chosen.full and whole_night:
        built.full_at = record.started_at
    # the docs are of this project (generated tonight, or last night's still true), or they failed
    built.docs_key = project if result.docs_error is None else None
    if result.docs_error is not None:
        built.catalog_key = None
    elif catalog:
        built.catalog_key = catalog[-1]
    built.manifest_key = project if whole_night else state.manifest_key
    try:
        changes.save(
            settings.state_dir,
            record.run_id,
            built,
            settings.target_path / "manifest.json" if whole_night else None,
        )
    except OSError as exc:  # the next night builds more than it needs: never a reason to fail this one
        log.warning("the build state was not saved to %s: %s", settings.state_dir, exc)


def _docs_needed(
    ran: list[NodeResult],
    chosen: changes.Selection,
    state: changes.BuildState,
    project: str,
    catalog: list[str | None],
    read_catalog: Callable[[], str | None],
) -> bool:
    """Whether tonight's docs must be generated again, given what the build ran: on a full night,
    when the project's files changed, or when a model, snapshot or seed ran and the warehouse's
    relations or columns (the docs' catalog) are not those the last docs showed. A night that
    rebuilt tables with new rows only keeps last night's docs (0.2-0.4 s of dbt on the demo).
    When they are generated, appends the catalog key they show to ``catalog`` (for the state)."""
    everything = chosen.full or state.docs_key != project
    if not everything and not any(n.resource_type in ("model", "snapshot", "seed") for n in ran):
        return False
    try:
        key = read_catalog()
    except Exception:  # never a reason to fail the night: the docs are generated
        log.warning("the warehouse's catalog could not be read; the docs are generated again", exc_info=True)
        key = None
    if everything or key is None or key != state.catalog_key:
        catalog.append(key)
        return True
    return False


def _unchanged(node: Any) -> NodeResult:
    return NodeResult(
        unique_id=node.unique_id,
        name=node.name,
        resource_type=str(node.resource_type),
        layer=_layer(node),
        status=UNCHANGED,
        seconds=0.0,
    )


def _fed_by(manifest: Manifest, sources: list[str]) -> set[str]:
    """The nodes downstream of the named sources."""
    children = manifest.child_map or {}
    fed: set[str] = set()
    for unique_id, source in manifest.sources.items():
        if source.source_name in sources:
            fed |= _closure(unique_id, children) - {unique_id}
    return fed


def _relations(con: Any, manifest: Manifest) -> dict[str, set[str]]:
    """The relations the warehouse holds in the schemas the project builds, by schema (lower case)."""
    schemas = {str(n.schema) for n in manifest.nodes.values() if n.resource_type in ("model", "snapshot", "seed")}
    return {schema.lower(): {t.lower() for t in table_names(con, schema)} for schema in schemas}


def _log_selection(chosen: changes.Selection, manifest: Manifest) -> None:
    if chosen.full:
        log.info("building every node", extra={"event": "build_selected", "full": True})
        return
    if chosen.idle:
        log.info(
            "nothing to build: no new data, and the project is the one last built",
            extra={"event": "build_selected", "full": False, "chosen": 0},
        )
        return
    by_reason: dict[str, list[str]] = {}
    for unique_id, why in sorted(chosen.reasons.items()):
        by_reason.setdefault(why, []).append(manifest.nodes[unique_id].name)
    for why, names in sorted(by_reason.items()):
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        log.info("building %d nodes (%s): %s", len(names), why, shown)
    log.info(
        "building what changed: %d nodes, what is downstream of them, and what was modified",
        len(chosen.reasons),
        extra={"event": "build_selected", "full": False, "chosen": len(chosen.reasons)},
    )


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
