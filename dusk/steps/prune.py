"""Retention: what a long-lived installation would otherwise keep for ever, pruned at the end of
every night (and by ``dusk prune``), each kind by its own setting in days (0: keep for ever).

- run records (``runs/<run id>.json``, never ``last_run.json``), run logs (``logs/``) and
  OpenLineage event files (``lineage/``): ``DUSK_KEEP_RUNS_DAYS``, default 90;
- dlt's completed load packages (``dlt/<source>/load/loaded/``; dlt's state lives in the
  warehouse, not in them): ``DUSK_KEEP_DLT_DAYS``, default 30;
- archived landing files (``<landing>/archive/``; raw holds their rows, the file ledger their
  hashes): ``DUSK_KEEP_ARCHIVE_DAYS``, default 0;
- the run ledger's history (every table of ``dusk_ledger`` keyed by run): ``DUSK_KEEP_LEDGER_DAYS``,
  default 0. The last run in which each step passed for each target is kept whatever its age:
  freshness, the microbatch window and ``dusk status`` read it.

Never pruned: the landing folder's unloaded files, the PII salt, secrets, raw, snapshots, the
served file, dlt's pipeline state and the file ledger.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dusk import ledger
from dusk.settings import PROJECT_DIR, Settings
from ingestion.declaration import SourceSpec
from ingestion.files.landing import ARCHIVE, landing_dir

log = logging.getLogger(__name__)

LEDGER_TABLES = (
    "steps",
    "source_tables",
    "dbt_nodes",
    "quarantine",
    "freshness",
    "schema_changes",
    "findings",
    "data_diff",
)
"""The ledger's tables keyed by ``run_id`` besides ``runs`` itself."""


@dataclass
class Pruned:
    """What one pruning removed (or, dry, would remove): counts and bytes by kind."""

    files: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    ledger_runs: int = 0

    def describe(self) -> str:
        parts = [f"{n} {kind}" for kind, n in self.files.items() if n]
        if self.ledger_runs:
            parts.append(f"{self.ledger_runs} ledger runs")
        return ", ".join(parts) + f" ({self.bytes / 1e6:.1f} MB)" if parts else "nothing"


def prune(
    settings: Settings,
    specs: dict[str, SourceSpec],
    con: ledger.Connection | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> Pruned:
    """Remove what is older than its kind's retention (``dry_run``: only count it)."""
    keep = settings.retention
    now = now or datetime.now(UTC)
    pruned = Pruned()
    runs = settings.data_dir / "runs"
    _files(
        pruned,
        "run records",
        [p for p in _listed(runs, "*.json") if p.name != "last_run.json"],
        keep.runs_days,
        now,
        dry_run,
    )
    _files(pruned, "run logs", _listed(settings.logs_dir, "*.jsonl"), keep.runs_days, now, dry_run)
    if settings.lineage_dir is not None:
        lineage = _listed(settings.lineage_dir, "*.jsonl")
        _files(pruned, "lineage events", lineage, keep.runs_days, now, dry_run)
    packages = [p for p in settings.pipelines_dir.glob("*/load/loaded/*") if p.is_dir()]
    _files(pruned, "dlt load packages", packages, keep.dlt_days, now, dry_run)
    archives: list[Path] = []
    for spec in specs.values():
        if spec.kind == "files":
            folder = landing_dir(spec, settings.landing_dir, PROJECT_DIR) / ARCHIVE
            archives += [p for p in _listed(folder, "*") if p.is_file()]
    _files(pruned, "archived landing files", sorted(set(archives)), keep.archive_days, now, dry_run)
    if con is not None and keep.ledger_days:
        pruned.ledger_runs = _ledger(con, now - timedelta(days=keep.ledger_days), dry_run)
    if not dry_run and (pruned.bytes or pruned.ledger_runs):
        log.info("pruned %s", pruned.describe(), extra={"event": "pruned", "files": pruned.files})
    return pruned


def _listed(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def _files(pruned: Pruned, kind: str, paths: list[Path], days: float, now: datetime, dry_run: bool) -> None:
    pruned.files[kind] = 0
    if not days:
        return
    cutoff = (now - timedelta(days=days)).timestamp()
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if stat.st_mtime >= cutoff:
            continue
        size = _size(path) if path.is_dir() else stat.st_size
        if not dry_run:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        pruned.files[kind] += 1
        pruned.bytes += size


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _ledger(con: ledger.Connection, cutoff: datetime, dry_run: bool) -> int:
    """Delete the ledger rows of runs started before ``cutoff``, but the last run in which each
    (step, target) passed: returns how many runs went."""
    schema = ledger.SCHEMA
    old = f"""
        select run_id from {schema}.runs
        where started_at < ?
          and run_id not in (
            select max(s.run_id) from {schema}.steps as s
            where s.status = 'ok' group by s.step, s.target
          )
    """
    cut = cutoff.astimezone(UTC).replace(tzinfo=None)
    started = time.monotonic()
    row = con.execute(f"select count(*) from ({old}) as o", [cut]).fetchone()
    count = int(row[0]) if row else 0
    if count and not dry_run:
        for table in LEDGER_TABLES:
            con.execute(f"delete from {schema}.{table} where run_id in ({old})", [cut])
        con.execute(f"delete from {schema}.runs where run_id in ({old})", [cut])
        log.info("pruned %d ledger runs started before %s in %.1fs", count, cut, time.monotonic() - started)
    return count
