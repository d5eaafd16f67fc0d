"""What happened tonight, as lines: the one rendering of failures and findings that the terminal
summary and the alert share (each only styles them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dusk.record import UNCHANGED, RelationDiff, RunResult

SUBJECT = "{}"


@dataclass(frozen=True)
class Line:
    """One thing to say about the night: ``error`` (it failed), ``warn`` or ``info``. ``text``
    holds ``{}`` where its ``subject`` (a source, a test, a table) goes: each renderer styles it."""

    level: str
    text: str
    subject: str = ""

    def render(self, subject_style: str = "{}") -> str:
        """The line with its subject styled (``"`{}`"``: as code, for the alert's Markdown)."""
        return self.text.replace(SUBJECT, subject_style.replace(SUBJECT, self.subject), 1)


def _safe(text: str | None) -> str:
    return (text or "").replace(SUBJECT, "{ }")


def _source_failed(name: str, attempts: int | None, error: str | None) -> Line:
    tail = f": {_safe(error)}" if error else ""
    return Line("error", f"source {{}} failed after {attempts or 1} attempt(s){tail}", name)


def _test_failed(name: str, failures: int | None, kept: str | None) -> Line:
    rows = f" ({failures} failing rows)" if failures else ""
    where = f": rows in {kept}" if kept else ""
    return Line("error", f"FAILED test {{}}{rows}{where}", name)


def _node_failed(resource_type: str, name: str, message: str | None) -> Line:
    return Line("error", f"ERROR in {resource_type} {{}}: {_safe(message)[:300]}", name)


def _finding(check: str, severity: str, target: str, message: str) -> Line:
    level = "error" if severity == "error" else "warn"
    return Line(level, f"{check} {severity}: {{}}: {_safe(message)}", target)


def _stale(status: str, name: str) -> Line:
    return Line("warn", f"freshness {status}: source {{}}", name)


def problems(record: RunResult) -> list[Line]:
    """Every failure and finding of the night, in the order of the steps."""
    lines = []
    if record.error:
        lines.append(Line("error", f"error: {_safe(record.error)}"))
    for source in record.sources:
        if source.skipped:
            lines.append(Line("warn", f"source {{}} skipped: {_safe(source.skipped)}", source.source))
        elif not source.ok:
            lines.append(_source_failed(source.source, source.attempts, source.error))
    dbt = record.dbt
    if dbt is not None:
        lines += [_test_failed(n.name, n.failures, n.failures_table) for n in dbt.failing_tests()]
        lines += [_node_failed(n.resource_type, n.name, n.message) for n in dbt.failing_nodes()]
        lines += [_stale(f.status, f.name) for f in dbt.stale()]
        if dbt.error:
            lines.append(Line("error", f"dbt: {_safe(dbt.error)}"))
        if dbt.docs_error:
            lines.append(Line("warn", f"docs not generated (the data was still published): {_safe(dbt.docs_error)}"))
    lines += [_finding(f.check, f.severity, f.target, f.message) for f in record.findings]
    if record.publish_error:
        why = _safe(record.publish_error)
        lines.append(Line("error", f"Not published: {why}; readers still see the last published night"))
    if dbt is not None and dbt.isolated and record.publish_error is None:
        for name, reasons in sorted(dbt.withheld.items()):
            text = f"withheld {{}} ({_safe('; '.join(reasons))}): readers keep last night's copy of what it feeds"
            lines.append(Line("warn", text + "; the rest of tonight is published", name))
    if record.failed_sources and dbt is not None:
        names = ", ".join(record.failed_sources)
        lines.append(Line("warn", f"dbt left everything downstream of the failed source(s) as it was: {names}"))
    return lines


def ledger_problems(
    run: Sequence[Any],
    sources: Sequence[Sequence[Any]],
    failing: Sequence[Sequence[Any]],
    stale: Sequence[Sequence[Any]],
    findings: Sequence[Sequence[Any]],
) -> list[Line]:
    """The same lines from a run's ledger rows (``dusk status``, the report): ``run`` as
    :func:`dusk.ledger.recent_runs` gives it, the rest as the ledger's ``*_of`` readers give them."""
    lines = [Line("error", f"error: {_safe(run[4])}")] if run[4] else []
    lines += [_source_failed(s[0], s[2], None) for s in sources if s[1] == "failed"]
    lines += [Line("warn", "source {} skipped", s[0]) for s in sources if s[1] == "skipped"]
    for name, resource_type, status, failures, kept, message in failing:
        if resource_type in ("test", "unit_test") and status in ("fail", "error"):
            lines.append(_test_failed(name, failures, kept))
        elif status in ("error", "runtime error"):
            lines.append(_node_failed(resource_type, name, message))
    lines += [_stale(status, f"{source}.{table}") for source, table, status in stale]
    lines += [_finding(*f) for f in findings]
    return lines


def diff_headline(diffs: Sequence[RelationDiff]) -> str:
    """One line on what tonight changes for readers (the data diff)."""
    compared = [d for d in diffs if d.status == "compared"]
    changed = [d for d in compared if not d.identical]
    parts = [f"{len(changed)} changed", f"{len(compared) - len(changed)} identical"]
    for status, words in (
        ("new", "new"),
        (UNCHANGED, "not rebuilt since published"),
        ("withheld", "withheld"),
        ("error", "not comparable"),
    ):
        count = sum(d.status == status for d in diffs)
        if count:
            parts.append(f"{count} {words}")
    return f"Data diff against what readers have: {len(diffs)} relations: " + ", ".join(parts)


def diff_rows(diffs: Sequence[RelationDiff], limit: int = 3) -> list[tuple[str, ...]]:
    """The relations that change for readers: relation, rows before and after, added, removed,
    changed, and the columns with the most changed values."""
    rows: list[tuple[str, ...]] = []
    for d in diffs:
        if d.identical:
            continue
        if d.status not in ("compared", "new", "error"):
            continue
        top = sorted(d.columns.items(), key=lambda item: (-item[1], item[0]))[:limit]
        columns = ", ".join(f"{c} ({n:,})" for c, n in top)
        if d.added_columns:
            columns = ", ".join(filter(None, [columns, "new: " + ", ".join(d.added_columns)]))
        if d.removed_columns:
            columns = ", ".join(filter(None, [columns, "gone: " + ", ".join(d.removed_columns)]))
        if d.retyped_columns:
            columns = ", ".join(filter(None, [columns, "new type: " + ", ".join(d.retyped_columns)]))
        if d.status != "compared":
            columns = d.status + (f": {d.error}" if d.error else "")

        def n(value: int | None) -> str:
            return "-" if value is None else f"{value:,}"

        share = d.share
        rows.append(
            (
                d.relation,
                n(d.rows_before),
                n(d.rows_after),
                n(d.added),
                n(d.removed),
                n(d.changed) if d.key else "no key",
                "-" if share is None else f"{share:.1%}",
                columns,
            )
        )
    return rows
