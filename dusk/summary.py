"""The end-of-run summary: what was loaded, built and tested, and where to look."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dusk.present import diff_headline, diff_rows, problems
from dusk.record import UNCHANGED, DbtResult, RelationDiff, RunResult
from dusk.settings import Settings

LAYER_ORDER = ("seed", "staging", "snapshot", "intermediate", "marts")


def print_summary(settings: Settings, result: RunResult, console: Console | None = None) -> None:
    """Print the run's summary tables and verdict."""
    console = console or Console()
    if result.mode != "run":
        console.print(f"[bold]{result.mode}[/bold]: re-extracted the window, cursors left where they were")
    if result.demo_created:
        console.print(f"Created the demo shop in {settings.demo_dir}")
    if result.sources:
        _sources(result, console)
    if result.dbt is not None:
        _dbt(result.dbt, console)
    if result.diff:
        print_diff(result.diff, console)
    for line in problems(result):
        colour = {"error": "red", "warn": "yellow"}.get(line.level)
        text = escape(line.render())
        console.print(f"[{colour}]{text}[/{colour}]" if colour else text)
    _where(settings, result, console)


def _sources(result: RunResult, console: Console) -> None:
    """Rows per source table, and how this night's data landed."""
    table = Table(title="Sources", title_justify="left")
    numbers = ("extracted", "deleted", "quarantined", "loaded")
    for col in ("source", "table", *numbers, "status"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for src in result.sources:
        status = "skipped" if src.skipped else "ok" if src.ok else "FAILED"
        if src.finished_pending:
            status += " (finished an interrupted load)"
        if not src.tables:
            table.add_row(src.source, "-", "-", "-", "-", "-", status)
        for t in src.tables:
            counts = (f"{t.extracted:,}", f"{t.deleted:,}", f"{t.quarantined:,}", f"{t.loaded:,}")
            table.add_row(src.source, t.table, *counts, status)
    console.print(table)
    for src in result.sources:
        for change in src.schema_changes:
            console.print(f"[yellow]schema change, source {src.source!r}: {change}[/yellow]")
        for note in src.notes:
            console.print(f"source {src.source!r}: {note}")


def _dbt(dbt: DbtResult, console: Console) -> None:
    """What dbt built per layer, the tests, the freshness."""
    models = Table(title="dbt", title_justify="left")
    for col in ("layer", "built", "errors", "skipped", "unchanged"):
        models.add_column(col, justify="left" if col == "layer" else "right")
    layers: dict[str, Counter[str]] = {}
    for node in dbt.nodes:
        if node.resource_type in ("test", "unit_test", "exposure"):
            continue
        layers.setdefault(node.layer, Counter())[node.status] += 1
    for layer in sorted(layers, key=lambda x: (LAYER_ORDER.index(x) if x in LAYER_ORDER else 99, x)):
        c = layers[layer]
        models.add_row(layer, str(c["success"]), str(c["error"]), str(c["skipped"]), str(c[UNCHANGED]))
    console.print(models)
    tests = dbt.tests()
    console.print(
        f"Tests: {tests['pass']} passed, {tests['warn']} warned, "
        f"{tests['fail'] + tests['error']} failed, {tests['skipped']} skipped"
        + (f", {tests[UNCHANGED]} unchanged (passed on the same data before)" if tests[UNCHANGED] else "")
    )
    stale = dbt.stale()
    console.print(f"Freshness: {len(dbt.freshness) - len(stale)} of {len(dbt.freshness)} source tables fresh")
    if dbt.seconds:
        share = 100 * dbt.overhead / dbt.seconds
        console.print(
            f"dbt: {dbt.seconds:.1f}s, of which SQL ran {dbt.sql_seconds:.1f}s; dbt's own overhead "
            f"{dbt.overhead:.1f}s ({share:.0f} %)"
        )


SHOWN_CHANGES = 12
"""Relations the summary's data diff table shows (the most changed first; the report has all)."""


def print_diff(diffs: list[RelationDiff], console: Console, shown: int = SHOWN_CHANGES) -> None:
    """What changes for readers: the relations that change most (those readers lack are counted
    in the headline)."""
    changing = sorted((d for d in diffs if d.status != "new"), key=lambda d: -(d.share or 0))
    rows = diff_rows(changing)
    if rows:
        table = Table(title="Changes for readers (+ added, - removed, ~ changed rows)", title_justify="left")
        cells = [row[:7] for row in rows[:shown]]
        table.add_column("relation", overflow="fold")
        for i, col in enumerate(("before", "after", "+", "-", "~", "share"), start=1):
            table.add_column(col, justify="right", no_wrap=True, min_width=max(len(r[i]) for r in cells))
        for row in cells:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        if len(rows) > shown:
            console.print(f"and {len(rows) - shown} more relations changed (the report lists them all)")
    console.print(diff_headline(diffs))


def _where(settings: Settings, result: RunResult, console: Console) -> None:
    """Where the night's outputs are, and the verdict."""
    dbt = result.dbt
    console.print(f"Warehouse: {settings.warehouse_label}")
    if result.published is not None:
        published = result.published
        same = len(published.reused) + len(published.kept)
        as_they_were = f", {same} as readers had them" if same else ""
        console.print(f"Published: {published.where} ({len(published.tables)} tables{as_they_were})")
    if dbt is not None and dbt.docs_path:
        console.print(f"Docs: {dbt.docs_path}")
    if result.report_path is not None:
        console.print(f"Report: {result.report_path}")
    elif result.report_error:
        console.print(f"[yellow]Report not written: {result.report_error}[/yellow]")
    if result.log_path is not None:
        console.print(f"Log: {result.log_path}")
    if result.metrics and result.metrics != "off":
        console.print(f"Metrics: {result.metrics}")
    if result.lineage and result.lineage != "off":
        console.print(f"Lineage: {result.lineage}")
    if result.spec:
        console.print(f"Spec: {result.spec}")
    if result.alert is not None and result.alert.sent:
        console.print(f"Alert sent: {result.alert.reason}")
    verdict = {
        "success": "[green]SUCCESS[/green]",
        "partial": "[yellow]PARTIAL[/yellow] ("
        + ("some sources failed" if result.failed_sources else "some sources withheld")
        + "; the rest is built, tested and published)",
        "stopped": f"[red]STOPPED[/red] by {result.stopped} (nothing published; the next night goes on)",
    }.get(result.status, "[red]FAILED[/red]")
    console.print(f"Run {verdict} in {result.seconds:.1f}s")
