"""The night's Prometheus metrics: the textfile a node exporter serves, parsed back with
prometheus-client's own parser, holds what the run record says; a Pushgateway (a local HTTP
receiver) gets the same metrics by PUT, grouped by environment; a push that fails names the
host only and fails nothing. (A real night's file: tests/test_end_to_end.py.)"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from dusk.record import DbtResult, Finding, NodeResult, PublishResult, RelationDiff, RunResult
from dusk.settings import Settings
from dusk.steps.metrics import metrics
from ingestion.result import SourceResult, TableStats
from tests.helpers import WebhookReceiver
from tests.helpers import prometheus_samples as samples


def night() -> RunResult:
    """A partial night: the shop loaded (with quarantined rows), the crm failed, a test failed."""
    record = RunResult(started_at=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), seconds=42.5)
    record.sources = [
        SourceResult(
            "shop", True, 3.25, tables=[TableStats("orders", extracted=10, deleted=1, loaded=9, quarantined=2)]
        ),
        SourceResult("crm", False, 1.5, error="source 'crm': connection refused"),
    ]

    def node(unique_id: str, kind: str, status: str, age: float | None = None) -> NodeResult:
        return NodeResult(unique_id, unique_id.split(".")[-1], kind, kind, status, 0.5, age_seconds=age)

    record.dbt = DbtResult(
        ok=False,
        seconds=12.0,
        sql_seconds=4.5,
        nodes=[
            node("model.dusk.orders", "model", "success"),
            node("model.dusk.customers", "model", "unchanged"),
            node("test.dusk.unique_orders_id", "test", "fail"),
            node("test.dusk.not_null_orders_id", "test", "pass"),
            node("test.dusk.not_null_customers_id", "test", "unchanged"),
        ],
        freshness=[
            node("source.dusk.shop.orders", "source", "pass", age=3600.0),
            node("source.dusk.crm.accounts", "source", "runtime error"),
        ],
        withheld={"shop": ["test unique_orders_id fail"]},  # readers keep the shop's part as it was
        withheld_relations=["marts.orders"],
    )
    record.findings = [Finding("volume_anomaly", "warn", "shop.orders", "fewer rows than usual")]
    record.diff = [RelationDiff("marts.orders", key=["order_id"], added=3, removed=1, changed=2, seconds=0.25)]
    record.published = PublishResult(where="served.duckdb", run_id=record.run_id, seconds=0.75)
    return record


def test_the_textfile_says_what_the_night_did(tmp_path: Path) -> None:
    settings = Settings(tmp_path, tmp_path / "w.duckdb", tmp_path / "t", False, 1)
    settings = replace(settings, metrics_file=tmp_path / "metrics" / "dusk.prom")
    record = night()
    assert metrics(settings, record) == f"written to {settings.metrics_file}"
    got = samples(settings.metrics_file.read_text())

    assert got[("dusk_run_status", (("status", "partial"),))] == 1
    assert got[("dusk_run_status", (("status", "success"),))] == 0
    labels = (("env", "prod"), ("mode", "run"), ("run_id", record.run_id), ("target", "duckdb"))
    assert got[("dusk_run_info", labels)] == 1
    assert got[("dusk_run_duration_seconds", ())] == 42.5
    assert got[("dusk_run_started_timestamp_seconds", ())] == record.started_at.timestamp()
    assert got[("dusk_step_duration_seconds", (("step", "ingest"), ("target", "shop")))] == 3.25
    assert got[("dusk_step_duration_seconds", (("step", "dbt"), ("target", "build, freshness, docs")))] == 12.0
    assert got[("dusk_step_duration_seconds", (("step", "publish"), ("target", "served.duckdb")))] == 0.75
    assert got[("dusk_source_up", (("source", "shop"),))] == 1
    assert got[("dusk_source_up", (("source", "crm"),))] == 0
    orders = (("source", "shop"), ("table", "orders"))
    assert {
        kind: got[("dusk_source_rows", (("kind", kind), *orders))] for kind in ("extracted", "deleted", "loaded")
    } == {
        "extracted": 10,
        "deleted": 1,
        "loaded": 9,
    }
    assert got[("dusk_quarantine_rows", orders)] == 2
    assert got[("dusk_dbt_overhead_seconds", ())] == 7.5  # 12 s of dbt, 4.5 s of SQL
    assert got[("dusk_dbt_tests_failing", ())] == 1
    assert got[("dusk_dbt_tests_unchanged", ())] == 1
    assert got[("dusk_dbt_tests", (("status", "pass"),))] == 1
    assert got[("dusk_dbt_nodes", (("resource_type", "model"), ("status", "unchanged")))] == 1
    assert got[("dusk_source_freshness_age_seconds", orders)] == 3600
    assert got[("dusk_source_freshness_pass", (("source", "crm"), ("table", "accounts")))] == 0
    assert ("dusk_source_freshness_age_seconds", (("source", "crm"), ("table", "accounts"))) not in got
    assert got[("dusk_findings", (("check", "volume_anomaly"), ("severity", "warn")))] == 1
    assert got[("dusk_relation_rows_changed", (("change", "added"), ("relation", "marts.orders")))] == 3
    assert got[("dusk_run_published", ())] == 1


def test_metrics_are_pushed_grouped_by_environment_and_a_failed_push_fails_nothing(tmp_path: Path) -> None:
    base = Settings(tmp_path, tmp_path / "w.duckdb", tmp_path / "t", False, 1, env="dev")
    record = night()
    with WebhookReceiver() as gateway:
        port = gateway.server.server_address[1]
        settings = replace(base, pushgateway_url=f"http://127.0.0.1:{port}")
        assert metrics(settings, record) == f"pushed to 127.0.0.1:{port}"
        assert gateway.paths == ["/metrics/job/dusk/env/dev"]
        assert samples(gateway.bodies[0])[("dusk_run_status", (("status", "partial"),))] == 1
    # the receiver is gone: the push fails, the host is named, the token in the URL is not
    settings = replace(base, pushgateway_url=f"http://127.0.0.1:{port}/secret-token-canary")
    outcome = metrics(settings, record)
    assert outcome.startswith(f"not pushed to 127.0.0.1:{port} (") and "canary" not in outcome
    (base.secrets_dir).mkdir(parents=True)
    (base.secrets_dir / "pushgateway_url").write_text(f"http://127.0.0.1:{port}\n")
    assert base.pushgateway == f"http://127.0.0.1:{port}"  # the secret file works too
