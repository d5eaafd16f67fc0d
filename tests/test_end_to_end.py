"""The whole night, as a user runs it: fresh workspace, run, simulate days, run again.

Checks what a user cares about: raw equals the source, the second run extracted only the changed
rows, the marts equal a from-scratch rebuild of the same final source, the snapshot history of
changed and deleted customers matches the simulator's ground truth, and a failing dbt test fails
the run and is named in the summary.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from dusk import columns as column_lineage
from tests.conftest import Workspace, delete_demo_stream
from tests.helpers import SHOP_KEYS, key_set, prometheus_samples
from tests.proof.invariants import assert_snapshot_is_truth

pytestmark = pytest.mark.e2e

TABLES = SHOP_KEYS
MARTS = ("orders", "customers", "daily_revenue", "products", "marketing_roas", "cohort_retention")
# Columns that legitimately differ between a nightly warehouse and a from-scratch rebuild: the load
# watermark, and the as-of customer attributes (the nightly snapshot saw versions a rebuild never sees).
RUN_DEPENDENT = {
    "orders": "last_load, customer_tier, customer_country_code",
    "products": "price_version_count, lowest_price, highest_price",
}


def source_keys(shop_db: Path, table: str) -> set[object]:
    with sqlite3.connect(shop_db) as con:
        return key_set(con.execute(f"select {TABLES[table]} from {table}"))


def tables_by_name(record: dict) -> dict[str, dict]:
    (shop,) = [s for s in record["sources"] if s["source"] == "shop"]
    return {t["table"]: t for t in shop["tables"]}


def assert_raw_matches_source(ws: Workspace) -> None:
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        for table, pk in TABLES.items():
            live = key_set(wh.sql(f"select {pk} from raw_shop.{table} where not _is_deleted").fetchall())
            assert live == source_keys(ws.shop_db, table), f"raw_shop.{table} live keys differ from the source"


def expected_changes(ws: Workspace, after_day: int, raw_before: dict[str, set[object]]) -> dict[str, tuple[int, int]]:
    """Per table: (rows changed since after_day that still exist, rows deleted that raw had)."""
    out = {}
    with sqlite3.connect(ws.truth_db) as truth:
        for table in TABLES:
            rows = truth.execute(
                "select pk, op from changes where table_name = ? and day > ?", (table, after_day)
            ).fetchall()
            alive = source_keys(ws.shop_db, table)
            # a restore brings back the row raw still holds, unless raw never had it
            changed = {
                pk
                for pk, op in rows
                if pk in alive and (op in ("insert", "update") or (op == "restore" and pk not in raw_before[table]))
            }
            deleted = {pk for pk, op in rows if op == "delete" and pk in raw_before[table] and pk not in alive}
            out[table] = (len(changed), len(deleted))
    return out


def assert_metrics_written(ws: Workspace, record: dict) -> None:
    """The night's Prometheus textfile holds its status, rows and freshness ages."""
    path = ws.data_dir / "metrics" / "dusk.prom"
    assert record["metrics"] == f"written to {path}"
    got = prometheus_samples(path.read_text())
    assert got[("dusk_run_status", (("status", record["status"]),))] == 1
    loaded = sum(v for (name, labels), v in got.items() if name == "dusk_source_rows" and ("kind", "loaded") in labels)
    assert loaded == sum(t["loaded"] for s in record["sources"] for t in s["tables"]) > 0
    ages = [v for (name, _), v in got.items() if name == "dusk_source_freshness_age_seconds"]
    assert len(ages) == len(record["dbt"]["freshness"]) and all(a >= 0 for a in ages)


def assert_lineage_written(ws: Workspace, record: dict) -> None:
    """The night's OpenLineage events: a START and an end per source and per node that ran, and a
    model's output columns as the warehouse has them."""
    path = ws.data_dir / "lineage" / f"{record['run_id']}.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["lineage"] == f"{len(events)} events written to {path}"
    runs = {(e["job"]["name"], e["eventType"]) for e in events}
    ran = [n for n in record["dbt"]["nodes"] if n["status"] != "unchanged" and n["resource_type"] != "exposure"]
    expected = {("night", "START"), ("night", "COMPLETE")}
    expected |= {(f"ingest.{s['source']}", state) for s in record["sources"] for state in ("START", "COMPLETE")}
    expected |= {(f"dbt.{n['resource_type']}.{n['name']}", state) for n in ran for state in ("START", "COMPLETE")}
    assert runs == expected
    (built,) = [e for e in events if e["job"]["name"] == "dbt.model.orders" and e["eventType"] == "COMPLETE"]
    (orders,) = built["outputs"]
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        columns = wh.execute(
            "select column_name from information_schema.columns where table_schema = 'marts' "
            "and table_name = 'orders' order by ordinal_position"
        ).fetchall()
    assert [f["name"] for f in orders["facets"]["schema"]["fields"]] == [c for (c,) in columns]
    # column-level lineage: the mart's e-mail derives from raw's, hashed on the way; in the report
    traced = column_lineage.load(ws.data_dir / "lineage" / "columns.json")
    email = {(o.relation, o.column, o.hashed) for o in column_lineage.to_sources(traced, "marts.customers", "email")}
    assert ("raw_shop.customers", "email", True) in email and not any(r.error for r in traced.values())
    assert "marts.customers" in (ws.data_dir / "report" / "index.html").read_text()
    assert {d["name"] for d in built["inputs"]} == {
        "intermediate.int_orders_summed",
        "intermediate.int_orders_customer_as_of",
    }


def assert_models_documented_with_an_owner_and_a_working_example(ws: Workspace) -> None:
    """Every model and snapshot names its owner and an example query (in its docs), and each
    example runs on the warehouse (readers' copy holds the published schemas only), returning
    rows."""
    manifest = json.loads((ws.root / "target" / "manifest.json").read_text())
    nodes = [
        n
        for n in manifest["nodes"].values()
        if n["resource_type"] in ("model", "snapshot") and n["package_name"] == "dusk"
    ]
    assert len(nodes) >= 30
    lacking = [n["name"] for n in nodes if not n["meta"].get("owner") or not n["meta"].get("example_query")]
    assert lacking == []
    empty = []
    with duckdb.connect(str(ws.warehouse), read_only=True) as warehouse:
        for node in nodes:
            rows = warehouse.execute(node["meta"]["example_query"]).fetchall()
            if not rows and not node["name"].startswith(("quarantine_", "base_")):
                empty.append(node["name"])
    assert empty == [], "examples that show nothing on the demo"


def test_nightly_runs_incrementally_and_matches_truth(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    first = ws.cli("run")
    assert "Created the demo shop" in first.stdout
    assert "Run SUCCESS" in first.stdout
    assert "static_index.html" in first.stdout
    assert (ws.root / "target" / "static_index.html").exists()
    record = ws.last_run()
    assert record["ok"] is True
    assert_raw_matches_source(ws)
    for table, stats in tables_by_name(record).items():
        assert stats["extracted"] == stats["loaded"] == len(source_keys(ws.shop_db, table))
        assert stats["deleted"] == 0
    assert_feeds_loaded(ws)
    tests = [n for n in record["dbt"]["nodes"] if n["resource_type"] in ("test", "unit_test")]
    assert tests and all(n["status"] == "pass" for n in tests)
    assert {n["layer"] for n in record["dbt"]["nodes"]} >= {"staging", "intermediate", "marts", "snapshot", "seed"}
    # dbt's overhead: the wall time in which no SQL ran, in the summary, the record and the ledger
    dbt = record["dbt"]
    assert 0 < dbt["sql_seconds"] < dbt["seconds"]
    assert "of which SQL ran" in first.stdout and "dbt's own overhead" in first.stdout
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        ledger = wh.execute("select sql_seconds from dusk_ledger.steps where step = 'dbt'").fetchall()
    assert ledger == [(dbt["sql_seconds"],)]
    assert_metrics_written(ws, record)
    assert_lineage_written(ws, record)
    assert_models_documented_with_an_owner_and_a_working_example(ws)
    # the night writes the pipeline's specification with its ledger's volumes
    assert f"Spec: written to {ws.data_dir / 'spec' / 'pipeline.md'}" in " ".join(first.stdout.split())
    spec = (ws.data_dir / "spec" / "pipeline.md").read_text()
    customers = len(source_keys(ws.shop_db, "customers"))
    assert f"| shop | customers | {customers:,} | {customers:,} | 1 | {record['run_id']} |" in spec

    raw_before = {t: source_keys(ws.shop_db, t) for t in TABLES}
    sim = ws.cli("simulate", "--days", "3")
    assert sim.stdout.count("day ") == 3

    second = ws.cli("run")
    assert "Run SUCCESS" in second.stdout
    assert_raw_matches_source(ws)
    assert_feeds_loaded(ws)
    stats = tables_by_name(ws.last_run())
    for table, (changed, deleted) in expected_changes(ws, 0, raw_before).items():
        assert stats[table]["extracted"] == changed, (
            f"{table}: extracted {stats[table]['extracted']}, changed {changed}"
        )
        assert stats[table]["deleted"] == deleted, table
        assert stats[table]["loaded"] == changed + deleted, table
        assert changed < len(raw_before[table]), f"{table}: the second run must not re-extract everything"

    # (a quiet night extracting nothing: simulate-check's rerun of every night, tests/proof)

    assert_snapshot_matches_truth(ws)
    assert_orders_carry_tier_as_of_order_time(ws)
    scratch = Workspace(tmp_path / "scratch")
    try:
        assert_marts_equal_from_scratch(ws, scratch)
    finally:
        delete_demo_stream(scratch.sources_file)

    # A row that breaks a relationship test withholds what the shop feeds (the other sources are
    # published: a partial night), and the summary names the test.
    with sqlite3.connect(ws.shop_db) as shop:
        shop.execute("insert into order_items values (999999, 1, 424242, 1, 9.99, '2026-02-01 00:00:00.000000')")
    failing = ws.cli("run", check=False)
    assert failing.returncode == 3, failing.stdout
    assert "FAILED test relationships_stg_shop__order_items_product_id" in failing.stdout
    assert "withheld shop (test relationships_stg_shop__order_items_product_id" in " ".join(failing.stdout.split())
    assert "Run PARTIAL (some sources withheld; the rest is built, tested and published)" in failing.stdout
    assert ws.last_run()["ok"] is False
    # the failing row is kept to inspect, where the summary says
    (failed,) = [n for n in ws.last_run()["dbt"]["nodes"] if n["status"] == "fail"]
    assert f"rows in {failed['failures_table']}" in " ".join(failing.stdout.split())
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        assert wh.execute(f"select * from {failed['failures_table']}").fetchall() == [(424242,)]


def assert_feeds_loaded(ws: Workspace) -> None:
    """The demo's API, files and stream reached raw: every payment, every file's good rows (the
    files archived), every event published to the stream (events or quarantined), all acked."""
    with sqlite3.connect(ws.data_dir / "demo" / "payments.sqlite") as con:
        payments = con.execute("select count(*), max(updated_at) from payments").fetchone()
    landing = ws.data_dir / "landing"
    assert not [p for p in landing.iterdir() if p.is_file()], "every dropped file is loaded and archived"
    archived = sorted(p.name for p in (landing / "archive").iterdir())
    with ws.read() as wh:
        got = wh.execute(
            "select count(*), strftime(max(updated_at), '%Y-%m-%dT%H:%M:%S.%fZ') from raw_payments.payments"
        ).fetchone()
        assert got == payments
        assert sorted(r[0] for r in wh.sql("select file from raw_marketing._files").fetchall()) == archived
        for table in ("marketing_spend", "fx_rates"):
            (loaded,) = wh.sql(
                f"select sum(rows_loaded) from raw_marketing._files where table_name = '{table}'"
            ).fetchone()
            assert wh.sql(f"select count(*) from raw_marketing.{table}").fetchone() == (loaded,), table
        events = wh.sql("select count(*) from raw_web.web_events").fetchone()[0]
        # the stream's quarantine table exists once a poison message came (some seeds send none)
        quarantined = wh.sql(
            "select count(*) from information_schema.tables "
            "where table_schema = 'raw_web' and table_name = '_quarantine'"
        ).fetchone()[0]
        poison = wh.sql("select count(*) from raw_web._quarantine").fetchone()[0] if events and quarantined else 0
    web = next(s for s in ws.last_run()["sources"] if s["source"] == "web")
    if web["skipped"]:
        assert os.environ.get("CI", "").lower() != "true", f"NATS must run in CI: {web['skipped']}"
        return
    assert events + poison == demo_stream_messages(ws) > 0


def demo_stream_messages(ws: Workspace) -> int:
    """Messages in the workspace's demo stream (all acknowledged by the durable consumer)."""
    import asyncio

    from ingestion import stream
    from ingestion.declaration import load_sources

    web = load_sources(ws.sources_file)["web"]

    async def count() -> int:
        nc = await stream.connect(str(web.option("servers")))
        try:
            js = nc.jetstream()
            name = str(web.option("stream"))
            info = await js.consumer_info(name, f"{web.option('durable')}_web_events")
            assert info.num_pending == 0 and info.num_ack_pending == 0
            return int((await js.stream_info(name)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def assert_snapshot_matches_truth(ws: Workspace) -> None:
    """Runs happened after day 0 and after day 3: the snapshot holds, per customer, the version
    at day 0 and, if it changed, the version after day 3; and the demo's three days did change
    and delete enough customers for that to mean something."""
    assert_snapshot_is_truth(ws, [0, 3])
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        changed, deleted = wh.execute(
            "select count(*) filter (where versions = 2), count(*) filter (where versions = 2 and deleted) "
            "from (select customer_id, count(*) as versions, bool_or(is_deleted and dbt_valid_to is null) as deleted "
            "from snapshots.customers_snapshot group by customer_id)"
        ).fetchone()
    assert changed > 20 and deleted >= 3, (changed, deleted)


def assert_orders_carry_tier_as_of_order_time(ws: Workspace) -> None:
    """For customers whose tier changed exactly once in days 1-3 (so the snapshot holds both
    versions), every order placed in those days carries the tier the truth says they had then."""
    with sqlite3.connect(ws.truth_db) as truth:
        rows = truth.execute(
            "select customer_id, day, updated_at, tier, is_deleted from customer_versions order by customer_id, rowid"
        ).fetchall()
    versions: dict[int, list[tuple[int, datetime, str, int]]] = {}
    for cid, day, updated_at, tier, is_deleted in rows:
        versions.setdefault(cid, []).append((day, datetime.fromisoformat(updated_at), tier, is_deleted))
    simple = {
        cid: v
        for cid, v in versions.items()
        if v[0][0] == 0 and len([x for x in v if x[0] > 0]) == 1 and not any(x[3] for x in v)
    }
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        orders = wh.sql(
            "select customer_id, ordered_at, customer_tier from marts.orders where ordered_at >= '2026-01-01'"
        ).fetchall()
    checked = changed = 0
    for cid, ordered_at, tier in orders:
        if cid not in simple:
            continue
        expected = [t for _, at, t, _ in simple[cid] if at <= ordered_at][-1]
        assert tier == expected, f"customer {cid}: order at {ordered_at} has tier {tier}, truth says {expected}"
        checked += 1
        changed += expected != simple[cid][0][2]
    assert checked >= 5 and changed > 0, (checked, changed)


def assert_marts_equal_from_scratch(ws: Workspace, scratch: Workspace) -> None:
    """Copy the final source into a new workspace, build from nothing, compare every mart."""
    scratch.shop_db.parent.mkdir(parents=True)
    for name in ("shop.sqlite", "truth.sqlite", "payments.sqlite"):
        shutil.copy(ws.data_dir / "demo" / name, scratch.data_dir / "demo" / name)
    shutil.copytree(ws.data_dir / "landing" / "archive", scratch.data_dir / "landing")  # every file again
    shutil.copytree(ws.data_dir / "secrets", scratch.data_dir / "secrets")  # the same PII salt
    out = scratch.cli("run")
    assert "Created the demo shop" not in out.stdout
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        wh.execute(f"attach '{scratch.warehouse}' as scratch (read_only)")
        for mart in MARTS:
            n = wh.sql(f"select count(*) from marts.{mart}").fetchall()[0][0]
            assert n > 0
            columns = f"* exclude ({RUN_DEPENDENT[mart]})" if mart in RUN_DEPENDENT else "*"
            for a, b in ((f"marts.{mart}", f"scratch.marts.{mart}"), (f"scratch.marts.{mart}", f"marts.{mart}")):
                diff = wh.sql(
                    f"select count(*) from (select {columns} from {a} except all select {columns} from {b})"
                ).fetchall()
                assert diff[0][0] == 0, f"{mart}: incremental and from-scratch builds differ ({a} minus {b})"
