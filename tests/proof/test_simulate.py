"""simulate-check: the simulator drives N nights across every source kind (database inserts,
updates, hard deletes, ties at the watermark, rows committed late, new files, API pages, stream
events, invalid records, one new source column, a table with a composite key) and after every
night the invariants hold: reconciliation (the summary's counts included), marts = a from-scratch
rebuild, snapshot history = ground truth, and re-running the night changes nothing and, as a
state-aware night with nothing new, builds no model, snapshot or seed.
`make simulate-check NIGHTS=30 SEED=...`."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from dusk.demo.shop import START
from tests.conftest import Workspace, write_tally
from tests.proof.invariants import (
    MARTS,
    RAW_TABLES,
    SNAPSHOTS,
    assert_reconciled,
    assert_snapshot_is_truth,
    assert_stock_snapshot_is_source,
    copy_warehouse,
    differences,
    drop_copy,
    rebuild_from_scratch,
    served_differences,
)

pytestmark = [pytest.mark.simulate, pytest.mark.e2e]

RELATIONS = [f"marts.{m}" for m in MARTS] + [f"snapshots.{s}" for s in SNAPSHOTS]
NEW_COLUMN_NIGHT = 1


def late_row(ws: Workspace) -> int:
    """An order changed now, but stamped with a time before the last run's watermark: a
    transaction that committed late (its new updated_at is older than rows already loaded)."""
    with sqlite3.connect(ws.shop_db) as shop:
        (oid, stamp) = shop.execute(
            "select order_id, updated_at from orders where status = 'placed' order by updated_at limit 1"
        ).fetchone()
        late = (datetime.fromisoformat(stamp) + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
        shop.execute("update orders set status = 'cancelled', updated_at = ? where order_id = ?", [late, oid])
    return int(oid)


def test_simulated_nights_keep_every_invariant(
    engine_workspace: Workspace,
    tmp_path: Path,
    seed: int,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture,
) -> None:
    """On each warehouse engine (``make simulate-check TARGET=postgres`` runs one)."""
    nights = int(request.config.getoption("--nights"))
    ws = engine_workspace
    engine = ws.engine
    env = {"DUSK_DEMO_SEED": str(seed)}
    # each run finds deletions at the end of its simulated day, as a nightly run would (the real
    # clock would put them months after every simulated change)
    detected_at = {night: START + timedelta(days=night) for night in range(nights + 1)}

    def clock(night: int) -> dict[str, str]:
        return {**env, "DUSK_DETECTED_AT": detected_at[night].isoformat()}

    tally = {"reconciled": 0, "rebuild": 0, "truth": 0, "rerun": 0, "served": 0}

    def say(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    replay = f"make simulate-check NIGHTS={nights} SEED={seed} TARGET={engine}"
    say(f"\nsimulate-check on {engine}: {nights} nights, seed {seed} (replay: {replay})")
    run_days = [0]
    ws.cli("run", env_extra=clock(0))
    for night in range(1, nights + 1):
        where = f"{engine} night {night} (seed {seed})"
        sim = ws.cli("simulate", "--days", "1", env_extra=env).stdout.strip()
        late = late_row(ws)
        if night == NEW_COLUMN_NIGHT:
            with sqlite3.connect(ws.shop_db) as shop:  # a source column appears
                shop.execute("alter table customers add column loyalty_points integer default 0")
        run_days.append(night)
        out = ws.cli("run", check=False, env_extra=clock(night))
        assert out.returncode == 0, f"{where}: the run failed\n{out.stdout[-4000:]}"
        record = ws.last_run()

        tables = assert_reconciled(ws, record)
        tally["reconciled"] += 1
        with sqlite3.connect(ws.shop_db) as shop:
            (status,) = shop.execute("select status from orders where order_id = ?", [late]).fetchone()
        with ws.read() as wh:
            (raw_status,) = wh.execute("select status from raw_shop.orders where order_id = ?", [late]).fetchone()
            columns = {
                c
                for (c,) in wh.execute(
                    "select column_name from information_schema.columns "
                    "where table_schema = 'raw_shop' and table_name = 'customers'"
                ).fetchall()
            }
        assert raw_status == status, f"{where}: order {late}, changed with an old updated_at, was not picked up"
        if night >= NEW_COLUMN_NIGHT:
            assert "loyalty_points" in columns, f"{where}: the new source column did not reach raw"

        scratch = copy_warehouse(ws, tmp_path / f"night{night}" / "scratch.duckdb")
        rebuild_from_scratch(ws, scratch)
        diff = differences(ws.attach, scratch, RELATIONS)
        assert not diff, f"{where}: the marts differ from a from-scratch rebuild: {diff}"
        tally["rebuild"] += 1

        customers, versions = assert_snapshot_is_truth(ws, run_days, detected_at)
        lines = assert_stock_snapshot_is_source(ws)
        tally["truth"] += 1

        before = copy_warehouse(ws, tmp_path / f"night{night}" / "before_rerun.duckdb")
        again = ws.cli("run", check=False, env_extra=clock(night))
        assert again.returncode == 0, f"{where}: the rerun failed\n{again.stdout[-4000:]}"
        moved = [
            (s["source"], t["table"], t["extracted"])
            for s in ws.last_run()["sources"]
            for t in s["tables"]
            if t["extracted"] or t["deleted"]
        ]
        assert not moved, f"{where}: re-running the night extracted again: {moved}"
        rebuilt = [
            n["name"]
            for n in ws.last_run()["dbt"]["nodes"]
            if n["resource_type"] in ("model", "snapshot", "seed") and n["status"] != "unchanged"
        ]
        assert not rebuilt, f"{where}: the rerun, with nothing new, built {rebuilt}"
        diff = differences(ws.attach, before, RELATIONS + list(RAW_TABLES))
        assert not diff, f"{where}: re-running the night changed {diff}"
        tally["rerun"] += 1
        # the rerun published what it did not copy again: readers have exactly the warehouse's
        diff = served_differences(ws, RELATIONS)
        assert not diff, f"{where}: readers' copy differs from the warehouse: {diff}"
        tally["served"] += 1
        for copy in (scratch, before):
            drop_copy(copy)
        say(
            f"night {night}: {sim.split(': ', 1)[-1]}; {tables} tables reconciled; "
            f"{len(MARTS)} marts = rebuild; snapshots = truth ({customers} customers, {versions} versions, "
            f"{lines} stock lines); counts reconciled; "
            "rerun changed and built nothing; served = warehouse"
        )
    line = (
        f"simulate-check on {engine}: {nights} nights (seed {seed}): {tally['reconciled']} reconciled, "
        f"{tally['rebuild']} marts = rebuild, {tally['truth']} snapshots = truth, {tally['rerun']} reruns unchanged, "
        f"{tally['served']} served = warehouse"
    )
    say(line)
    write_tally(f"simulate-{engine}", line)
