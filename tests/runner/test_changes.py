"""State-aware nights: a night builds only what changed since the nights before and what it
reaches, and the result equals a full rebuild.

One project (a copy, with a data test a variable can break) through nights on DuckDB: a first
night builds everything; a quiet night builds no model and keeps the docs; a change to one source
table builds exactly that table's downstream, keeps the docs (only rows changed), and the marts
equal a from-scratch rebuild; a night whose state was lost (a kill between the build and the
state's save) builds again what the lost night built; a test that failed is run again the next
night though nothing changed (and a column added by hand meanwhile makes it generate the docs); a
changed model is built with what is downstream of it, and nothing else, and the docs again;
``--full`` builds every node. Without a night: the state belongs to one warehouse, a partial night
keeps the manifest of the last whole one, the full night falls due after DUSK_FULL_BUILD_DAYS, and
the docs are generated again only when what they show changed."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dbt.contracts.graph.manifest import Manifest

from dusk.steps import changes
from tests.conftest import Workspace, delete_demo_stream
from tests.helpers import always_built, downstream, project_copy
from tests.proof.invariants import MARTS, SNAPSHOTS, copy_warehouse, differences, rebuild_from_scratch

BREAKABLE = "data-tests/assert_not_broken_on_request.sql"
RELATIONS = [f"marts.{m}" for m in MARTS] + [f"snapshots.{s}" for s in SNAPSHOTS]


def _ran(ws: Workspace) -> dict[str, str]:
    """The last night's dbt nodes that ran (exposures have nothing to run), with their status."""
    nodes = ws.last_run()["dbt"]["nodes"]
    return {
        n["unique_id"]: n["status"] for n in nodes if n["status"] != "unchanged" and n["resource_type"] != "exposure"
    }


def _reprice(ws: Workspace, product_id: int) -> None:
    """A change to one row of one source table (the shop's products)."""
    with sqlite3.connect(ws.shop_db) as shop:
        shop.execute(
            "update products set unit_price = unit_price + 1, updated_at = datetime('now') where product_id = ?",
            [product_id],
        )


def _night(ws: Workspace, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = ws.cli("run", *args, check=False, env_extra=env)
    assert out.returncode in (0, 3), out.stdout[-3000:] + out.stderr[-3000:]
    return ws.last_run()


def test_the_state_belongs_to_its_warehouse_and_keeps_the_manifest_a_partial_night_left(tmp_path: Path) -> None:
    state_dir, manifest = tmp_path / "state", tmp_path / "manifest.json"
    manifest.write_text('{"night": 1}')
    nodes = {"model.dusk.orders": {"source.dusk.shop.orders": "3:1700000000.1"}}
    changes.save(state_dir, "run1", changes.BuildState(warehouse="duckdb a.duckdb", nodes=nodes), manifest)
    assert changes.load(state_dir, "duckdb b.duckdb") == changes.BuildState()  # another warehouse: nothing built
    first = changes.load(state_dir, "duckdb a.duckdb")
    assert first.nodes == nodes and first.manifest is not None

    changes.save(state_dir, "run2", first, None)  # a --select night: the manifest stays the last whole night's
    second = changes.load(state_dir, "duckdb a.duckdb")
    assert second.manifest == state_dir / "run2"
    assert (state_dir / "run2" / "manifest.json").read_text() == '{"night": 1}'
    assert sorted(p.name for p in state_dir.iterdir()) == ["current", "run2"]


def test_a_full_night_falls_due_after_full_build_days_and_a_full_night_reads_no_relation(tmp_path: Path) -> None:
    manifest = Manifest()
    manifest.build_parent_and_child_maps()
    (tmp_path / "manifest.json").write_text("{}")
    now = datetime.now(UTC)

    def relations() -> dict[str, set[str]]:
        raise AssertionError("a full night needs no list of relations")

    for days, full in ((8, True), (6, False)):
        state = changes.BuildState(folder=tmp_path, full_at=now - timedelta(days=days))
        chosen = changes.select(manifest, state, {}, relations if full else dict, full_every=timedelta(days=7), now=now)
        assert chosen.full is full
        assert chosen.select == ([] if full else ["state:modified+"])
    # nothing new, and the project the kept manifest was parsed from: no dbt build at all
    kept = changes.BuildState(folder=tmp_path, full_at=now, manifest_key="project-a")
    assert changes.select(manifest, kept, {}, dict, project="project-a", now=now).idle
    edited = changes.select(manifest, kept, {}, dict, project="project-b", now=now)
    assert not edited.idle and edited.select == ["state:modified+"]
    never = changes.BuildState(folder=tmp_path, full_at=now - timedelta(days=400))
    assert not changes.select(manifest, never, {}, dict, full_every=None, now=now).full  # DUSK_FULL_BUILD_DAYS=0
    assert changes.select(manifest, changes.BuildState(), {}, relations).full  # a first night


def test_the_docs_are_generated_again_only_when_what_they_show_changed() -> None:
    from dusk.record import NodeResult
    from dusk.steps.build import _docs_needed

    model = [NodeResult("model.dusk.orders", "orders", "model", "marts", "success", 1.0)]
    test = [NodeResult("test.dusk.t", "t", "test", "tests", "pass", 1.0)]
    last = changes.BuildState(docs_key="project-a", catalog_key="catalog-a")
    night = changes.Selection(select=[], state=None, full=False)

    def decide(ran: list[NodeResult], chosen: changes.Selection, project: str, read: Any) -> tuple[bool, list]:
        catalog: list[str | None] = []
        return _docs_needed(ran, chosen, last, project, catalog, read), catalog

    def unread() -> str:
        raise AssertionError("nothing was built: the catalog need not be read")

    def broken() -> str:
        raise RuntimeError("information_schema unreadable")

    assert decide(test, night, "project-a", unread) == (False, [])  # no relation rebuilt
    assert decide(model, night, "project-a", lambda: "catalog-a") == (False, [])  # new rows only
    assert decide(model, night, "project-a", lambda: "catalog-b") == (True, ["catalog-b"])
    assert decide(test, night, "project-b", lambda: "catalog-a") == (True, ["catalog-a"])  # the project changed
    full = changes.Selection(select=[], state=None, full=True)
    assert decide([], full, "project-a", lambda: "catalog-a") == (True, ["catalog-a"])
    assert decide(model, night, "project-a", lambda: None) == (True, [None])  # Spark: no catalog key
    assert decide(model, night, "project-a", broken) == (True, [None])


@pytest.mark.e2e
def test_a_night_builds_what_changed_and_equals_a_full_rebuild(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    breakable = (
        "-- fails when DUSK_TEST_BREAK=yes: a test that fails once, then passes on the same data\n"
        "select product_id from {{ ref('products') }}\n"
        "where '{{ env_var('DUSK_TEST_BREAK', 'no') }}' = 'yes'\n"
    )
    project = project_copy(tmp_path / "project", {BREAKABLE: breakable})
    ws = Workspace(tmp_path / "ws", project=project)
    ws.root.mkdir()
    request.addfinalizer(lambda: delete_demo_stream(ws.sources_file))
    test_id = "test.dusk.assert_not_broken_on_request"

    first = _night(ws)
    assert first["dbt"]["full"] and first["status"] == "success"
    everything = set(_ran(ws))
    assert test_id in everything and all(s in ("success", "pass") for s in _ran(ws).values())

    docs = ws.root / "target" / "static_index.html"
    docs_written = docs.stat().st_mtime_ns
    quiet = _night(ws)
    assert not quiet["dbt"]["full"]
    assert _ran(ws) == {}, "a night with nothing new ran dbt's build (the ledger's new rows alone do not count)"
    unchanged = {n["unique_id"] for n in quiet["dbt"]["nodes"] if n["status"] == "unchanged"}
    assert unchanged == everything
    assert quiet["dbt"]["freshness"], "a night with nothing to build checks its sources' freshness all the same"
    assert docs.stat().st_mtime_ns == docs_written, "the docs were generated again though nothing they show changed"
    assert {d["status"] for d in first["diff"]} == {"new"}, "readers had nothing before the first night"
    assert {d["status"] for d in quiet["diff"]} == {"unchanged"}, "the diff compared what no night rebuilt"
    reused = set(quiet["published"]["reused"])
    assert reused == {d["relation"] for d in quiet["diff"]}, "a quiet night copied data readers had"

    # one source table changes: exactly what it feeds is built, and the marts equal a full rebuild
    _reprice(ws, 3)
    state = ws.data_dir / "state"
    before = tmp_path / "state-before"
    shutil.copytree(state, before)
    repriced = _night(ws)
    built = _ran(ws)
    assert set(built) == downstream(ws, "source.dusk.shop.products") | always_built(ws)
    # the data diff says what readers get: one product's price and what follows from it
    diff = {d["relation"]: d for d in repriced["diff"]}
    for relation in ("staging.stg_shop__products", "marts.products"):
        d = diff[relation]
        assert (d["status"], d["added"], d["removed"], d["changed"]) == ("compared", 0, 0, 1), d
        assert d["columns"]["unit_price"] == 1 and d["key"] == ["product_id"]
    history = diff["snapshots.products_snapshot"]  # the new version, and the old one closed
    counts = (history["added"], history["removed"], history["changed"], history["columns"])
    assert counts == (1, 0, 1, {"dbt_valid_to": 1})
    assert diff["marts.customers"]["status"] == "unchanged"
    assert "model.dusk.stg_shop__customers" not in built and "model.dusk.marketing_roas" not in built
    assert docs.stat().st_mtime_ns == docs_written, "only rows changed, yet the docs were generated again"
    scratch = copy_warehouse(ws, tmp_path / "scratch" / "rebuilt.duckdb")
    rebuild_from_scratch(ws, scratch)
    assert differences(ws.attach, scratch, RELATIONS) == {}

    # killed after the build, before the state was saved: the next night builds it all again
    shutil.rmtree(state)
    shutil.copytree(before, state)
    _night(ws)
    assert set(_ran(ws)) == set(built), "a night that lost its state skipped work"

    # a failing test fails the night's shop part; the next night runs it again, on the same data.
    # A column added by hand meanwhile to a mart that night does not rebuild: what the docs show
    # of the warehouse changed, so a night that builds anything generates them again
    docs_written = docs.stat().st_mtime_ns
    with duckdb.connect(str(ws.warehouse)) as con:
        con.execute("alter table marts.customers add column note varchar")
    _reprice(ws, 4)
    broken = _night(ws, env={"DUSK_TEST_BREAK": "yes"})
    assert broken["status"] == "partial" and _ran(ws)[test_id] == "fail"
    assert docs.stat().st_mtime_ns != docs_written, "the warehouse's catalog changed, the docs were kept"
    fixed = _night(ws)
    assert fixed["status"] == "success" and _ran(ws) == {test_id: "pass"} | dict.fromkeys(always_built(ws), "pass")

    # a changed model: it and what it feeds, nothing else
    model = next(project.glob("models/marts/**/marketing_roas.sql"))
    model.write_text(model.read_text() + "\n-- a comment is a change to dbt\n")
    docs_written = docs.stat().st_mtime_ns
    _night(ws)
    assert set(_ran(ws)) == downstream(ws, "model.dusk.marketing_roas") | always_built(ws)
    assert docs.stat().st_mtime_ns != docs_written, "the project changed, the docs were kept"

    full = _night(ws, "--full")
    assert full["dbt"]["full"] and set(_ran(ws)) == everything
