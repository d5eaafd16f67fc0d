"""OpenLineage run events, as a lineage receiver (Marquez) gets them: a local HTTP receiver is
sent a START and an end for the night, each source's ingestion and each dbt node that ran, with
the datasets each read and wrote, their columns, rows loaded and tests; nodes left unchanged send
nothing; a receiver that is down costs one refused event and fails nothing. (A real night's
file: tests/test_end_to_end.py.)"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dusk import columns
from dusk.record import DbtResult, NodeResult, RunResult
from dusk.settings import Settings
from dusk.steps.lineage import lineage
from ingestion.declaration import SourceSpec
from ingestion.result import SourceResult, TableStats
from tests.helpers import WebhookReceiver

STARTED = datetime(2030, 1, 2, 3, 0, tzinfo=UTC)
MANIFEST = {
    "sources": {
        "source.dusk.shop.orders": {
            "resource_type": "source",
            "schema": "raw_shop",
            "name": "orders",
            "identifier": "orders",
            "columns": {"order_id": {"data_type": "bigint"}},
        }
    },
    "nodes": {
        "model.dusk.stg_shop__orders": {
            "resource_type": "model",
            "schema": "staging",
            "name": "stg_shop__orders",
            "alias": "stg_shop__orders",
            "config": {"materialized": "table"},
            "columns": {"order_id": {"data_type": "bigint"}, "amount": {"data_type": "decimal(18,2)"}},
            "depends_on": {"nodes": ["source.dusk.shop.orders"]},
        },
        "model.dusk.orders": {
            "resource_type": "model",
            "schema": "marts",
            "name": "orders",
            "alias": "orders",
            "config": {"materialized": "table"},
            "columns": {},
            "depends_on": {"nodes": ["model.dusk.stg_shop__orders"]},
        },
        "test.dusk.unique_stg_shop__orders_order_id": {
            "resource_type": "test",
            "name": "unique_stg_shop__orders_order_id",
            "schema": "staging",
            "column_name": "order_id",
            "attached_node": "model.dusk.stg_shop__orders",
            "depends_on": {"nodes": ["model.dusk.stg_shop__orders"]},
        },
    },
}


def _night() -> RunResult:
    record = RunResult(started_at=STARTED, seconds=30.0)
    record.sources = [
        SourceResult("shop", True, 2.0, tables=[TableStats("orders", extracted=5, loaded=5)], started_at=STARTED),
    ]

    def node(unique_id: str, kind: str, status: str, second: int) -> NodeResult:
        at = STARTED + timedelta(seconds=second)
        name = unique_id.split(".")[-1]
        return NodeResult(
            unique_id, name, kind, "staging", status, 1.0, started_at=at, completed_at=at + timedelta(seconds=1)
        )

    record.dbt = DbtResult(
        ok=True,
        seconds=10.0,
        nodes=[
            node("model.dusk.stg_shop__orders", "model", "success", 5),
            node("test.dusk.unique_stg_shop__orders_order_id", "test", "pass", 7),
            node("model.dusk.orders", "model", "unchanged", 0),
        ],
    )
    return record


def _settings(tmp_path: Path) -> Settings:
    settings = Settings(tmp_path / "data", tmp_path / "w.duckdb", tmp_path / "target", False, 1)
    settings.target_path.mkdir(parents=True)
    (settings.target_path / "manifest.json").write_text(json.dumps(MANIFEST))
    return settings


def test_a_receiver_gets_the_night_its_sources_and_the_dbt_nodes_that_ran(tmp_path: Path) -> None:
    specs = {"shop": SourceSpec(name="shop", kind="database", description="", tables=[], demo=False)}
    with WebhookReceiver() as marquez:
        settings = replace(_settings(tmp_path), openlineage_url=f"http://127.0.0.1:{marquez.server.server_address[1]}")
        traced = {  # what the audit's column-level lineage kept
            "staging.stg_shop__orders": columns.Traced(
                key="k",
                columns={
                    "order_id": [columns.Origin("raw_shop.orders", "order_id")],
                    "amount": [columns.Origin("raw_shop.orders", "amount", hashed=True, condition=True)],
                },
            )
        }
        columns.save(settings.column_lineage_path, traced)
        outcome = lineage(settings, None, _night(), specs, STARTED + timedelta(seconds=30))
        events = marquez.posts
    assert outcome == f"8 events sent to 127.0.0.1:{marquez.server.server_address[1]}"
    assert set(marquez.paths) == {"/api/v1/lineage"}
    jobs = [(e["job"]["name"], e["eventType"]) for e in events]
    assert jobs == [
        ("night", "START"),
        ("ingest.shop", "START"),
        ("ingest.shop", "COMPLETE"),
        ("dbt.model.stg_shop__orders", "START"),
        ("dbt.model.stg_shop__orders", "COMPLETE"),
        ("dbt.test.unique_stg_shop__orders_order_id", "START"),
        ("dbt.test.unique_stg_shop__orders_order_id", "COMPLETE"),
        ("night", "COMPLETE"),
    ]  # marts.orders was left unchanged: it did not run, it sends nothing
    for event in events:  # what Marquez requires of a run event
        assert {"eventType", "eventTime", "run", "job", "producer", "schemaURL", "inputs", "outputs"} <= set(event)
        assert event["job"]["namespace"] == "dusk" and datetime.fromisoformat(event["eventTime"]).tzinfo is not None
    night_run = events[0]["run"]["runId"]
    assert all(e["run"]["facets"]["parent"]["run"]["runId"] == night_run for e in events[1:-1])
    assert events[1]["run"]["runId"] == events[2]["run"]["runId"] != night_run

    ingested = events[2]
    assert ingested["inputs"] == [{"namespace": "database://shop", "name": "orders", "facets": {}, "inputFacets": {}}]
    (raw,) = ingested["outputs"]
    assert (raw["namespace"], raw["name"]) == (f"duckdb://{settings.warehouse}", "raw_shop.orders")
    assert raw["outputFacets"]["outputStatistics"]["rowCount"] == 5

    built = events[4]
    assert [(d["name"]) for d in built["inputs"]] == ["raw_shop.orders"]
    (staged,) = built["outputs"]
    assert staged["name"] == "staging.stg_shop__orders"
    fields = [(f["name"], f["type"]) for f in staged["facets"]["schema"]["fields"]]
    assert fields == [("order_id", "bigint"), ("amount", "decimal(18,2)")]
    fed = staged["facets"]["columnLineage"]["fields"]
    (order_id,) = fed["order_id"]["inputFields"]
    assert (order_id["name"], order_id["field"]) == ("raw_shop.orders", "order_id")
    assert order_id["transformations"][0] | {"description": None} == {
        "type": "DIRECT",
        "subtype": "TRANSFORMATION",
        "masking": False,
        "description": None,
    }
    (amount,) = fed["amount"]["inputFields"]
    assert (amount["transformations"][0]["type"], amount["transformations"][0]["masking"]) == ("INDIRECT", True)
    assert built["eventTime"] == (STARTED + timedelta(seconds=6)).isoformat()
    tested = events[6]
    (read,) = tested["inputs"]
    (assertion,) = read["facets"]["dataQualityAssertions"]["assertions"]
    assert {k: assertion[k] for k in ("assertion", "success", "column")} == {
        "assertion": "unique_stg_shop__orders_order_id",
        "success": True,
        "column": "order_id",
    }


def test_a_file_per_night_by_default_and_a_receiver_down_fails_nothing(tmp_path: Path) -> None:
    settings = replace(_settings(tmp_path), lineage_dir=tmp_path / "data" / "lineage")
    record = _night()
    record.sources[0] = replace(record.sources[0], ok=False, error="source 'shop': connection refused")
    path = settings.lineage_dir / f"{record.run_id}.jsonl"
    assert lineage(settings, None, record, {}, STARTED) == f"8 events written to {path}"
    lines: list[dict[str, Any]] = [json.loads(line) for line in path.read_text().splitlines()]
    failed = lines[2]
    assert failed["eventType"] == "FAIL" and failed["run"]["facets"]["errorMessage"]["message"].endswith("refused")
    assert lineage(settings, None, record, {}, STARTED).startswith("8 events")  # written again, not appended
    assert len(path.read_text().splitlines()) == 8

    with WebhookReceiver() as gone:
        port = gone.server.server_address[1]
    down = replace(settings, lineage_dir=None, openlineage_url=f"http://127.0.0.1:{port}")
    outcome = lineage(down, None, record, {}, STARTED)
    assert outcome.startswith(f"0 of 8 events sent to 127.0.0.1:{port}, then ")
