"""What ingesting one source did: the result types the runner reads (no dlt, no dbt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class TableStats:
    """Rows of one source table in one run."""

    table: str
    extracted: int = 0
    deleted: int = 0
    loaded: int = 0
    quarantined: int = 0


@dataclass
class SourceResult:
    """What ingesting one source did."""

    source: str
    ok: bool
    seconds: float
    tables: list[TableStats] = field(default_factory=list)
    error: str | None = None
    finished_pending: bool = False
    load_ids: list[str] = field(default_factory=list)
    pending_load_ids: list[str] = field(default_factory=list)
    """The load ids (among ``load_ids``) of packages an interrupted run left, finished first; the
    tables' counts are of this run's own packages."""
    skipped: str | None = None
    """Why the source was not read this run (an optional stream without its server), if it was not."""
    transient: bool = False
    """The failure looks passing (connection refused or reset, timeout): worth another attempt."""
    attempts: int = 1
    schema_changes: list[str] = field(default_factory=list)
    """Source schema changes found this run: widenings applied to raw, new source types recorded."""
    notes: list[str] = field(default_factory=list)
    """Columns that land as another type than the obvious one, and why (e.g. a numeric as text)."""
    abandoned: bool = False
    """Given up past its time limit while still running: its thread was left behind."""
    started_at: datetime | None = None
    """When the source's first attempt started, UTC."""

    @property
    def status(self) -> str:
        """``ok``, ``skipped`` or ``failed``."""
        return "skipped" if self.skipped else "ok" if self.ok else "failed"

    @property
    def rows_loaded(self) -> int:
        """Rows raw received from this run's own loads, over every table."""
        return sum(t.loaded for t in self.tables)
