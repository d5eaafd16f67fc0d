"""The night's record: what a run plans and what each step returned.

The ground floor of the runner: every step fills in its part, the ledger, the JSON run record, the
summary, the alert and the report read it. It imports nothing of the project but ingestion's
result types, and neither dlt nor dbt (import-linter checks it in ``make lint``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ingestion.result import SourceResult


def format_run_id(started_at: datetime) -> str:
    """A run's id: its start time (UTC), as in data/runs/<run id>.json and the ledger."""
    return f"{started_at:%Y%m%dT%H%M%S%fZ}"


UNCHANGED = "unchanged"
"""The status of a dbt node a state-aware night left as it was: it passed, or was built, on exactly
the data it would read again (dusk.steps.changes)."""


DEFER_SELECT = "state:modified+"
"""What a deferred run builds when it is given no selection: what changed against prod, and what
it feeds."""


@dataclass(frozen=True)
class Plan:
    """What one run does: which sources it ingests, what dbt builds, and, for a backfill, the
    window it re-reads."""

    sources: tuple[str, ...] = ()
    """Sources to ingest (empty: all of sources.yml)."""
    select: tuple[str, ...] = ()
    """dbt selection (empty: everything, or what depends on ``sources`` when they are given)."""
    full_refresh: bool = False
    full: bool = False
    """Build every node, not only what changed since the nights before (dusk.steps.changes)."""
    backfill: tuple[date, date] | None = None
    """First and last day (inclusive) a backfill re-extracts and rebuilds."""
    defer: bool = False
    """Outside prod: what is not selected is read from prod's published data (dbt's ``--defer``),
    and ``state:`` selectors compare with prod's last night."""

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
    age_seconds: float | None = None
    """A source table's freshness check only: the age of its newest row when checked."""
    started_at: datetime | None = None
    """When dbt started the node (compiling it), UTC."""
    completed_at: datetime | None = None
    """When dbt finished the node, UTC."""


@dataclass
class DbtResult:
    """What the build step (dbt build, source freshness, docs) did."""

    ok: bool
    seconds: float
    nodes: list[NodeResult] = field(default_factory=list)
    freshness: list[NodeResult] = field(default_factory=list)
    docs_path: Path | None = None
    error: str | None = None
    """Why the build or freshness did not complete (fails the night)."""
    docs_error: str | None = None
    """Why the docs were not generated: reported, never a reason to keep tested data from readers."""
    withheld: dict[str, list[str]] = field(default_factory=dict)
    """When what failed (tests, models, stale source freshness) traces back to some sources only:
    those sources, each with the reason, and :attr:`withheld_relations` are what readers keep
    at the last published night; the rest of tonight is published (a ``partial`` night)."""
    withheld_relations: list[str] = field(default_factory=list)
    """The ``schema.table`` relations built from the withheld sources."""
    full: bool = True
    """Whether the build selected every node; otherwise what changed and what it reaches, the rest
    reported as ``unchanged`` (dusk.steps.changes)."""
    sql_seconds: float = 0.0
    """Of :attr:`seconds`, the time during which at least one node's SQL was executing (build and
    freshness); the rest is dbt's own overhead (start-up, parsing, compiling, docs)."""
    freshness_limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    """Each source's freshness limits in hours, (warn, error), as its dbt source declares them
    (the strictest of its tables'); a source without any is not listed."""

    @property
    def overhead(self) -> float:
        """dbt's wall time in which no SQL ran."""
        return max(self.seconds - self.sql_seconds, 0.0)

    def tests(self) -> Counter[str]:
        """Test outcomes (data and unit tests) by status."""
        return Counter(n.status for n in self.nodes if n.resource_type in ("test", "unit_test"))

    def failing_tests(self) -> list[NodeResult]:
        """Tests that failed or errored."""
        return [n for n in self.nodes if n.resource_type in ("test", "unit_test") and n.status in ("fail", "error")]

    def failing_nodes(self) -> list[NodeResult]:
        """Models, snapshots and seeds that errored."""
        return [n for n in self.nodes if n.resource_type not in ("test", "unit_test") and n.status == "error"]

    def stale(self) -> list[NodeResult]:
        """Source tables whose freshness is not ``pass``."""
        return [f for f in self.freshness if f.status not in ("pass", "success")]

    @property
    def isolated(self) -> bool:
        """dbt failed, but only in what some sources feed: the rest may be published."""
        return not self.ok and self.error is None and bool(self.withheld)


@dataclass(frozen=True)
class Finding:
    """Something the audit's monitoring noticed about tonight."""

    check: str
    """``volume``, ``freshness_sla`` or ``quarantine_rate``."""
    severity: str
    """``warn`` or ``error``."""
    target: str
    """``source`` or ``source.table``."""
    message: str
    value: float | None = None
    limit: float | None = None


@dataclass
class PublishResult:
    """What was published."""

    where: str
    """The served file (DuckDB) or the readers' schemas (PostgreSQL)."""
    run_id: str
    seconds: float
    tables: dict[str, int] = field(default_factory=dict)
    """Rows per published ``schema.table``."""
    kept: list[str] = field(default_factory=list)
    """The ``schema.table`` relations published as they were (withheld tonight)."""
    reused: list[str] = field(default_factory=list)
    """The relations readers had exactly as tonight holds them (the data diff found them identical,
    or no model rebuilt them): not copied again, on DuckDB and Spark."""


@dataclass
class RelationDiff:
    """How one reader-facing relation built tonight differs from the copy readers have now."""

    relation: str
    """``schema.table``."""
    key: list[str] | None = None
    """The columns rows are matched by (the model's unique key); None: whole rows are compared."""
    rows_before: int | None = None
    """Rows readers have now (None: they have no such relation yet)."""
    rows_after: int | None = None
    added: int = 0
    removed: int = 0
    changed: int | None = None
    """Rows whose key is on both sides with some other value changed (None: no key, a changed
    row counts as one removed and one added)."""
    columns: dict[str, int] = field(default_factory=dict)
    """Per column, the values changed (rows matched by key; only columns with a change)."""
    added_columns: list[str] = field(default_factory=list)
    removed_columns: list[str] = field(default_factory=list)
    retyped_columns: list[str] = field(default_factory=list)
    """Columns whose type changed (their values are compared as text)."""
    max_changed_share: float | None = None
    """The gate: the largest :attr:`share` the relation may have (None: no gate)."""
    severity: str = "warn"
    """What breaking the gate raises: ``warn`` (alerted, published) or ``error`` (not published)."""
    status: str = "compared"
    """``compared``; ``unchanged`` (not rebuilt since readers got it: not compared); ``new``;
    ``withheld`` (readers keep theirs tonight); ``error`` (the comparison failed: :attr:`error`)."""
    error: str | None = None
    seconds: float = 0.0

    @property
    def different(self) -> int:
        """Rows added, removed or changed."""
        return self.added + self.removed + (self.changed or 0)

    @property
    def reshaped(self) -> bool:
        """Columns were added, removed or retyped."""
        return bool(self.added_columns or self.removed_columns or self.retyped_columns)

    @property
    def identical(self) -> bool:
        """Compared, and readers' copy holds exactly tonight's rows and columns."""
        return self.status == "compared" and not self.different and not self.reshaped

    @property
    def share(self) -> float | None:
        """:attr:`different` as a share of the larger side (0..1); None when there is nothing to
        compare with (a new or empty relation)."""
        if self.status != "compared" or not self.rows_before:
            return None
        return self.different / max(self.rows_before, self.rows_after or 0, 1)

    @property
    def breached(self) -> bool:
        """The gate is set and the share is above it."""
        share = self.share
        return self.max_changed_share is not None and share is not None and share > self.max_changed_share


@dataclass
class AlertOutcome:
    """Whether tonight's alert was sent (and why not, when it was not)."""

    sent: bool
    reason: str


@dataclass
class RunResult:
    """Everything the summary, the ledger, the report and the alert show about one run."""

    started_at: datetime
    mode: str = "run"
    """``run`` or ``backfill <start>..<end>``."""
    sources: list[SourceResult] = field(default_factory=list)
    dbt: DbtResult | None = None
    demo_created: bool = False
    error: str | None = None
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    diff: list[RelationDiff] = field(default_factory=list)
    """What tonight changes for readers, per reader-facing relation (compared before publishing)."""
    published: PublishResult | None = None
    publish_error: str | None = None
    """Why tonight was not published (None when it was, or when nothing ran far enough)."""
    alert: AlertOutcome | None = None
    heartbeat: str | None = None
    """What the heartbeat ping did (``sent``, ``off``, or why it failed)."""
    stopped: str | None = None
    """The signal that stopped the night (SIGTERM, SIGINT), if one did: its status is ``stopped``
    (unless it came after the publish: then the night is what it published)."""
    log_path: Path | None = None
    report_path: Path | None = None
    report_error: str | None = None
    metrics: str | None = None
    """Where the night's Prometheus metrics went (written, pushed, or why not; ``off``)."""
    lineage: str | None = None
    """Where the night's OpenLineage events went (written, sent, or why not; ``off``)."""
    spec: str | None = None
    """Where the night wrote the pipeline's specification (or why it did not)."""

    @property
    def run_id(self) -> str:
        """The run's id (its start time)."""
        return format_run_id(self.started_at)

    @property
    def failed_sources(self) -> list[str]:
        """Sources that failed tonight (a skipped optional source is not a failure)."""
        return [s.source for s in self.sources if not s.ok and not s.skipped]

    @property
    def status(self) -> str:
        """``success``: everything loaded, built, passed and was published. ``partial``: some
        sources failed, or dbt failed only in what some sources feed, and everything that does not
        depend on them was built, passed and was published. ``failed``: otherwise (a failed test
        that traces back to no source, or an error-level monitoring finding, included: nothing of
        tonight is published then). ``stopped``: a signal stopped it
        (nothing of tonight is published)."""
        if self.stopped is not None and self.published is None:
            return "stopped"
        if self.audit_failed or self.publish_error is not None:
            return "failed"
        loaded = [s for s in self.sources if s.ok and not s.skipped]
        if self.failed_sources:
            return "partial" if loaded else "failed"
        if self.dbt is not None and self.dbt.isolated:
            return "partial"
        return "success"

    @property
    def audit_failed(self) -> bool:
        """The night's own work failed: an error, a dbt failure that is not confined to some
        sources' models (:attr:`DbtResult.isolated`) or an error-level finding."""
        if self.error is not None or self.dbt is None or not (self.dbt.ok or self.dbt.isolated):
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
