"""The audit step, monitoring: tonight's numbers against the run ledger's history and the configured limits.

Three checks, each raising a finding of the severity its configuration gives (``warn`` is
reported and alerted; ``error`` also fails the run, so nothing is published):

- **volume**: rows loaded per source table, as a z-score against the same table's previous
  loads (its first, full load left out); ``DUSK_ANOMALY_Z``, ``DUSK_ANOMALY_MIN_HISTORY``,
  ``DUSK_ANOMALY_WINDOW``, ``DUSK_ANOMALY_SEVERITY``;
- **freshness SLA**: hours since each source that failed tonight last loaded successfully,
  against the freshness its dbt source declares (``warn_after``/``error_after``: declared once,
  in dbt, the same limits ``dbt source freshness`` checks);
- **quarantine rate**: the share of a table's live rows held in quarantine
  (``DUSK_QUARANTINE_MAX_SHARE``, default 5 %, ``DUSK_QUARANTINE_SEVERITY``);
- **unhashed PII** (always ``error``): a reader-facing column whose value derives, through no
  hash, from a column tagged ``pii`` (column-level lineage, :mod:`dusk.columns`, traced from
  dbt's compiled SQL; kept in ``<data dir>/lineage/columns.json``).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from datetime import datetime

from dusk import columns, ledger
from dusk.record import Finding, RunResult
from dusk.settings import MonitorSettings, Settings
from dusk.warehouse import table_names

log = logging.getLogger(__name__)


def audit(settings: Settings, con: ledger.Connection, record: RunResult) -> list[Finding]:
    """Every finding about this run (the ledger holds the previous runs' numbers), recorded in
    the ledger with the audit's step row."""
    started = time.monotonic()
    m = settings.monitor
    findings = volume(con, record, m) + freshness_sla(con, record)
    if record.dbt is not None:
        findings += quarantine_rate(con, m)
        findings += unhashed_pii(settings, con)
    for f in findings:
        (log.error if f.severity == "error" else log.warning)("monitor %s %s: %s", f.check, f.target, f.message)
    ledger.audited(con, record, findings, time.monotonic() - started)
    return findings


def unhashed_pii(settings: Settings, con: ledger.Connection) -> list[Finding]:
    """Reader-facing columns that carry a ``pii`` column's value unhashed, from the column-level
    lineage of the project as dbt last compiled it (traced again only where SQL or columns
    changed, and kept for the report and for you in ``columns.json``)."""
    try:
        manifest = json.loads((settings.target_path / "manifest.json").read_text())
    except (OSError, ValueError):
        log.warning("no dbt manifest in %s: column lineage and the PII check are left out", settings.target_path)
        return []
    path = settings.column_lineage_path
    schemas = {
        str(n.get("schema")) for n in [*manifest.get("nodes", {}).values(), *manifest.get("sources", {}).values()]
    }
    traced = columns.trace(
        manifest, settings.target_path, columns.catalog(con, schemas), settings.target, columns.load(path)
    )
    try:
        columns.save(path, traced)
    except OSError as exc:
        log.warning("column lineage not written to %s: %s", path, exc)
    published = [s for s in settings.publish_schemas if s != ledger.SCHEMA]
    return [
        Finding(
            "pii_unhashed",
            "error",
            leak.split(" <- ")[0],
            f"derives from a column tagged pii with no hash on the way ({leak}): hash it in staging "
            "(tag the staging column pii, or use the pii() macro) or leave it out of the model",
        )
        for leak in columns.unhashed_pii(traced, columns.pii_columns(manifest), published)
    ]


def volume(con: ledger.Connection, result: RunResult, m: MonitorSettings) -> list[Finding]:
    """Tables whose rows loaded tonight are more than ``anomaly_z`` standard deviations from
    their history (the standard deviation is taken as at least 1 row: a table that always
    loads the same count is flagged when it loads anything else)."""
    findings: list[Finding] = []
    if result.mode != "run":
        return findings  # a backfill's volume is the window's, not a night's
    for source in result.sources:
        if not source.ok or source.skipped:
            continue
        for table in source.tables:
            history = ledger.loaded_history(con, source.source, table.table, m.anomaly_window, result.run_id)
            if len(history) < m.anomaly_min_history:
                continue
            mean = statistics.fmean(history)
            spread = max(statistics.pstdev(history), 1.0)
            z = (table.loaded - mean) / spread
            if abs(z) > m.anomaly_z:
                findings.append(
                    Finding(
                        "volume",
                        m.anomaly_severity,
                        f"{source.source}.{table.table}",
                        f"loaded {table.loaded:,} rows; the last {len(history)} loads averaged {mean:,.1f} "
                        f"(sd {spread:,.1f}): z-score {z:+.1f} beyond ±{m.anomaly_z:g}",
                        round(z, 2),
                        m.anomaly_z,
                    )
                )
    return findings


def freshness_sla(con: ledger.Connection, result: RunResult) -> list[Finding]:
    """Sources that failed tonight whose last successful load is older than the freshness their
    dbt source declares: ``error`` past ``error_after``, ``warn`` past ``warn_after``. A source
    never loaded is measured from the installation's first run."""
    now = result.started_at.replace(tzinfo=None)
    loaded_now = {s.source for s in result.sources if s.ok and not s.skipped}
    tried = {s.source for s in result.sources}
    limits = result.dbt.freshness_limits if result.dbt is not None else {}
    since: datetime = ledger.first_run_started(con) or now
    findings = []
    for name, (warn, error) in sorted(limits.items()):
        if name in loaded_now or name not in tried:
            continue
        last_ok = ledger.last_loaded(con, name)
        age = (now - (last_ok or since)).total_seconds() / 3600
        breached = [
            (sev, limit) for sev, limit in (("error", error), ("warn", warn)) if limit is not None and age > limit
        ]
        if not breached:
            continue
        severity, limit = breached[0]
        when = f"last loaded {last_ok:%Y-%m-%d %H:%M} UTC" if last_ok else "never loaded"
        findings.append(
            Finding(
                "freshness_sla",
                severity,
                name,
                f"{when}, {age:.1f} h ago; its dbt source's {severity}_after is {limit:g} h",
                round(age, 2),
                limit,
            )
        )
    return findings


def quarantine_rate(con: ledger.Connection, m: MonitorSettings) -> list[Finding]:
    """Tables with more than the allowed share of their live rows in quarantine."""
    views = set(table_names(con, "staging"))
    findings = []
    for source, view in ledger.quarantine_views(con):
        counts = con.execute(f'select table_name, count(*) from staging."{view}" group by 1 order by 1').fetchall()
        for table, held in counts:
            staged_view = f"stg_{source}__{table}"
            if staged_view not in views:
                continue
            staged_row = con.execute(f'select count(*) from staging."{staged_view}"').fetchone()
            staged = int(staged_row[0]) if staged_row else 0
            share = held / (held + staged)
            if share > m.quarantine_max_share:
                findings.append(
                    Finding(
                        "quarantine_rate",
                        m.quarantine_severity,
                        f"{source}.{table}",
                        f"{held:,} of {held + staged:,} rows ({share:.1%}) are in quarantine "
                        f"(staging.{view}); the limit is {m.quarantine_max_share:.0%}",
                        round(share, 4),
                        m.quarantine_max_share,
                    )
                )
    return findings
