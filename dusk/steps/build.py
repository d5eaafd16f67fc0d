"""The dbt step: build (models, snapshots, seeds, tests), source freshness and docs, in-process.

dbt is parsed once and the manifest is handed to the following invocations, so a night pays dbt's
start-up cost once. Results are read from dbt's result objects, never from its text output.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from dbt.cli.main import dbtRunner
from dbt.contracts.graph.manifest import Manifest

from dusk.settings import PROJECT_DIR, Settings

PROFILES_DIR = PROJECT_DIR / "profiles"


@dataclass
class NodeResult:
    """One dbt node's outcome in this run."""

    unique_id: str
    name: str
    resource_type: str
    layer: str
    status: str
    seconds: float
    failures: int | None = None
    message: str | None = None
    failures_table: str | None = None
    """Where a failing test's rows are kept (store_failures; long test names are shortened there)."""
    rows_affected: int | None = None
    """Rows the adapter reports for a model, seed or snapshot (None where it reports none)."""


@dataclass
class DbtResult:
    """What the dbt step did."""

    ok: bool
    seconds: float
    nodes: list[NodeResult] = field(default_factory=list)
    freshness: list[NodeResult] = field(default_factory=list)
    docs_path: Path | None = None
    error: str | None = None

    def tests(self) -> Counter[str]:
        """Test outcomes (data and unit tests) by status."""
        return Counter(n.status for n in self.nodes if n.resource_type in ("test", "unit_test"))

    def failing_tests(self) -> list[NodeResult]:
        """Tests that failed or errored."""
        return [n for n in self.nodes if n.resource_type in ("test", "unit_test") and n.status in ("fail", "error")]

    def failing_nodes(self) -> list[NodeResult]:
        """Models, snapshots and seeds that errored."""
        return [n for n in self.nodes if n.resource_type not in ("test", "unit_test") and n.status == "error"]


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


def run_dbt(
    settings: Settings,
    select: list[str] | None = None,
    full_refresh: bool = False,
    event_window: tuple[date, date] | None = None,
    exclude: list[str] | None = None,
    callbacks: list[Any] | None = None,
) -> DbtResult:
    """Run build, source freshness and docs generate; dbt's own failures are captured, not raised.

    ``event_window`` (first day, day after the last) is handed to microbatch models as
    ``--event-time-start/--event-time-end``: they rebuild those days instead of their lookback.
    ``exclude`` leaves nodes out of the build (the descendants of sources that failed tonight).
    ``callbacks`` receive dbt's events (the progress bar counts finished nodes)."""
    started = time.monotonic()
    result = DbtResult(ok=False, seconds=0.0)
    parsed = dbtRunner().invoke(dbt_args(settings, "parse"))
    if not parsed.success:
        result.error = f"dbt parse failed: {parsed.exception or 'see the dbt log'}"
        result.seconds = time.monotonic() - started
        return result
    manifest = parsed.result if isinstance(parsed.result, Manifest) else None
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

    # the build compiled the shared manifest's nodes already: the docs show that SQL
    docs = runner.invoke(dbt_args(settings, "docs", "generate", "--static", "--no-compile"))
    if docs.success:
        result.docs_path = settings.docs_path
    elif result.error is None:
        result.error = f"dbt docs generate failed: {docs.exception or 'see the dbt log'}"

    stale = [f for f in result.freshness if f.status in ("error", "runtime error")]
    result.ok = build.success and not stale and docs.success and result.error is None
    result.seconds = time.monotonic() - started
    return result
