"""The night's metrics for Prometheus: written in the node-exporter textfile format after every
night (node exporter's ``--collector.textfile.directory`` pointed at the file's folder serves
them), and pushed to a Pushgateway when one is configured. Made with ``prometheus-client``, from
the run record only: the metrics say what the summary, the ledger and the report say.

Every metric is a gauge of the last night (a textfile holds one night; Prometheus keeps the
history). Metrics never fail a night: a file that cannot be written or a push that fails is
logged and named in the run record's ``metrics`` field.
"""

from __future__ import annotations

import logging
from collections import Counter
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from dusk.record import UNCHANGED, RunResult
from dusk.settings import Settings

log = logging.getLogger(__name__)

STATUSES = ("success", "partial", "failed", "stopped")
ROW_KINDS = ("extracted", "deleted", "quarantined", "loaded")
PUSH_TIMEOUT = 10.0
"""Seconds a push to the Pushgateway may take."""


def registry_for(settings: Settings, record: RunResult) -> CollectorRegistry:
    """The night's metrics, in a registry of their own."""
    registry = CollectorRegistry(auto_describe=True)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"dusk_{name}", doc, labels, registry=registry)

    info = gauge(
        "run_info",
        "The last night: its id, mode, environment and warehouse engine (value 1).",
        ("run_id", "mode", "env", "target"),
    )
    info.labels(record.run_id, record.mode, settings.env, settings.target).set(1)
    status = gauge("run_status", "The last night's status: 1 for the one it ended with, 0 for the others.", ("status",))
    for each in STATUSES:
        status.labels(each).set(1 if record.status == each else 0)
    gauge("run_started_timestamp_seconds", "When the last night started (Unix time).").set(
        record.started_at.timestamp()
    )
    gauge("run_duration_seconds", "How long the last night took.").set(record.seconds)
    gauge("run_published", "1 when the last night was published to readers, else 0.").set(
        1 if record.published is not None else 0
    )

    step = gauge(
        "step_duration_seconds", "Seconds of each step of the last night (ingest: per source).", ("step", "target")
    )
    for source in record.sources:
        step.labels("ingest", source.source).set(source.seconds)
    if record.dbt is not None:
        step.labels("dbt", "build, freshness, docs").set(record.dbt.seconds)
    if record.diff:
        step.labels("diff", "readers' copy").set(sum(d.seconds for d in record.diff))
    if record.published is not None:
        step.labels("publish", record.published.where).set(record.published.seconds)

    ok = gauge("source_up", "1 when the source loaded (or was skipped as optional), 0 when it failed.", ("source",))
    rows = gauge("source_rows", "Rows of each source table in the last night, by kind.", ("source", "table", "kind"))
    quarantine = gauge(
        "quarantine_rows", "Rows the last night put in quarantine, per source table.", ("source", "table")
    )
    for source in record.sources:
        ok.labels(source.source).set(1 if source.ok or source.skipped else 0)
        for table in source.tables:
            for kind in ROW_KINDS:
                rows.labels(source.source, table.table, kind).set(getattr(table, kind))
            quarantine.labels(source.source, table.table).set(table.quarantined)

    if record.dbt is not None:
        dbt = record.dbt
        gauge("dbt_seconds", "The dbt step's wall time.").set(dbt.seconds)
        gauge("dbt_sql_seconds", "Of the dbt step, the time during which some node's SQL ran.").set(dbt.sql_seconds)
        gauge("dbt_overhead_seconds", "Of the dbt step, the time in which no SQL ran (dbt's own cost).").set(
            dbt.overhead
        )
        nodes = gauge(
            "dbt_nodes",
            "dbt nodes of the last night by kind and status (unchanged: not run, passed on the same data before).",
            ("resource_type", "status"),
        )
        for (kind, state), count in sorted(Counter((n.resource_type, n.status) for n in dbt.nodes).items()):
            nodes.labels(kind, state).set(count)
        tests = gauge("dbt_tests", "Data and unit tests by outcome.", ("status",))
        for state, count in sorted(dbt.tests().items()):
            tests.labels(state).set(count)
        gauge("dbt_tests_failing", "Tests that failed or errored in the last night.").set(len(dbt.failing_tests()))
        gauge("dbt_tests_unchanged", "Tests not run: nothing they read changed.").set(dbt.tests()[UNCHANGED])
        age = gauge(
            "source_freshness_age_seconds", "Age of each source table's newest row when checked.", ("source", "table")
        )
        fresh = gauge(
            "source_freshness_pass", "1 when the source table's freshness passed, else 0.", ("source", "table")
        )
        for result in dbt.freshness:
            source_table = _source_table(result.unique_id)
            fresh.labels(*source_table).set(1 if result.status in ("pass", "success") else 0)
            if result.age_seconds is not None:
                age.labels(*source_table).set(result.age_seconds)

    findings = gauge("findings", "Monitoring findings of the last night by check and severity.", ("check", "severity"))
    for (check, severity), count in sorted(Counter((f.check, f.severity) for f in record.findings).items()):
        findings.labels(check, severity).set(count)
    changed = gauge(
        "relation_rows_changed",
        "Rows of each reader-facing relation that the last night changed against readers' copy, by change.",
        ("relation", "change"),
    )
    for d in record.diff:
        if d.status == "compared":
            counts: tuple[tuple[str, int | None], ...] = (
                ("added", d.added),
                ("removed", d.removed),
                ("changed", d.changed),
            )
            for change, value in counts:
                if value is not None:
                    changed.labels(d.relation, change).set(value)
    return registry


def _source_table(unique_id: str) -> tuple[str, str]:
    """``source.dusk.shop.orders`` -> (``shop``, ``orders``)."""
    parts = unique_id.split(".")
    return parts[-2], parts[-1]


def metrics(settings: Settings, record: RunResult) -> str:
    """Write the night's metrics to ``settings.metrics_file`` (whole or not at all: the client
    writes beside it and renames) and push them when a Pushgateway is configured; what happened,
    in one line (also stored in the run record)."""
    registry = registry_for(settings, record)
    done = []
    if settings.metrics_file is not None:
        try:
            settings.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(settings.metrics_file), registry)
            done.append(f"written to {settings.metrics_file}")
        except OSError as exc:
            log.warning("the metrics were not written to %s: %s", settings.metrics_file, exc)
            done.append(f"not written to {settings.metrics_file}: {exc.strerror or exc}")
    url = settings.pushgateway
    if url is not None:
        where = _shown(url)
        try:
            # grouped by environment: each environment's night replaces its own, not another's
            push_to_gateway(
                url, job="dusk", registry=registry, grouping_key={"env": settings.env}, timeout=PUSH_TIMEOUT
            )
            done.append(f"pushed to {where}")
        except Exception as exc:  # never a reason to fail the night: named, and the file is there
            log.warning("the metrics were not pushed to %s: %s", where, type(exc).__name__)
            done.append(f"not pushed to {where} ({type(exc).__name__})")
    return "; ".join(done) or "off"


def _shown(url: str) -> str:
    """The Pushgateway's host and port, never its path or credentials (the URL may hold a token)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "the Pushgateway"
