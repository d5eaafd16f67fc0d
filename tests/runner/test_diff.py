"""The data diff: what a night changes for readers, counted before it is published, and its gate.

On DuckDB, a project copy whose marts carry a gate (``meta.diff``): a first night publishes
everything as new; after a simulated day the diff's counts equal the same comparison done in
Python on both copies (by key where the project declares one, as multisets of rows otherwise) and
the simulator's own count of changed products; a gate of ``error`` keeps the night from readers
(the served copy stays the first night's); raised, the next night publishes."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dusk.record import RelationDiff
from dusk.settings import Settings
from dusk.steps.diff import Gate, Gates, compare_schemas, duckdb_sides, gate_findings
from tests.conftest import PROJECT_DIR, Workspace
from tests.helpers import project_copy

GATED = "    marts:\n      +materialized: table\n"


def _manifest(tmp_path: Path, nodes: dict[str, Any]) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"nodes": nodes}))
    return path


def test_keys_come_from_the_project_and_gates_from_meta_or_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def model(name: str, **config: Any) -> dict[str, Any]:
        return {"resource_type": "model", "schema": "marts", "name": name, "alias": name, "config": config}

    nodes = {
        "model.dusk.a": model("a", unique_key="a_id", meta={"diff": {"max_changed_share": 0.1, "severity": "error"}}),
        "model.dusk.b": model("b"),
        "model.dusk.c": model("c", unique_key=["x", "y"]),
        "snapshot.dusk.s": {"resource_type": "snapshot", "schema": "snapshots", "name": "s", "config": {}},
        "test.dusk.unique_b": {
            "resource_type": "test",
            "attached_node": "model.dusk.b",
            "column_name": "b_id",
            "test_metadata": {"name": "unique"},
        },
        "test.dusk.pair_b": {
            "resource_type": "test",
            "attached_node": "model.dusk.b",
            "test_metadata": {"name": "unique_combination", "kwargs": {"columns": ["p", "q"]}},
        },
    }
    monkeypatch.setenv("DUSK_DIFF_MAX_CHANGED_SHARE", "0.5")
    gates = Gates.of(Settings.from_env(data_dir=tmp_path), _manifest(tmp_path, nodes))
    assert (gates["marts.a"].key, gates["marts.a"].max_changed_share, gates["marts.a"].severity) == (
        ["a_id"],
        0.1,
        "error",
    )
    assert gates["marts.b"].key == ["b_id"], "the narrowest unique test is the key"
    assert gates["marts.c"].key == ["x", "y"] and gates["marts.c"].max_changed_share == 0.5
    assert gates["snapshots.s"].key == ["dbt_scd_id"], "a snapshot's rows are versions"
    assert gates["staging.unknown"].key is None and gates["staging.unknown"].severity == "warn"

    within = RelationDiff("marts.a", ["a_id"], 100, 100, 5, 0, 5, max_changed_share=0.1, severity="error")
    past = RelationDiff("marts.a", ["a_id"], 100, 110, 10, 0, 5, max_changed_share=0.1, severity="error")
    new = RelationDiff("marts.n", None, None, 10, 10, status="new", max_changed_share=0.0)
    assert within.share == 0.1 and not within.breached
    assert past.share == pytest.approx(15 / 110) and past.breached
    assert new.share is None and not new.breached, "a relation readers never had has nothing to gate"
    (finding,) = gate_findings([within, past, new])
    assert (finding.check, finding.severity, finding.target) == ("data_diff", "error", "marts.a")
    assert "13.6%" in finding.message and "10.0%" in finding.message


def test_a_repeated_key_is_compared_by_whole_rows_and_never_found_identical(tmp_path: Path) -> None:
    served = tmp_path / "served.duckdb"
    with duckdb.connect(str(served)) as con:
        con.execute("create schema marts")
        con.execute("create table marts.once as select * from (values (1, 'x'), (2, 'y')) v(k, a)")
        con.execute("create table marts.twice as select * from (values (1, 'x'), (2, 'y')) v(k, a)")
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute("create schema marts")
        con.execute("create table marts.once as select * from (values (1, 'x'), (2, 'z')) v(k, a)")
        con.execute("create table marts.twice as select * from (values (1, 'x'), (1, 'x'), (2, 'y')) v(k, a)")
        gates = Gates(Gate(), {"marts.once": Gate(["k"]), "marts.twice": Gate(["k"])}, {})
        with duckdb_sides(con, served) as sides:
            once, twice = compare_schemas(con, sides, ("marts",), gates)
    assert (once.key, once.added, once.removed, once.changed, once.columns) == (["k"], 0, 0, 1, {"a": 1})
    # matched by a key that repeats, the extra row would have gone unseen and readers kept without it
    assert (twice.key, twice.rows_before, twice.rows_after, twice.added, twice.removed) == (None, 2, 3, 1, 0)
    assert not twice.identical


def _rows(con: duckdb.DuckDBPyConnection, relation: str, columns: list[str]) -> list[tuple[Any, ...]]:
    names = ", ".join(f'"{c}"' for c in columns)
    return con.execute(f"select {names} from {relation}").fetchall()


def _expected(
    con: duckdb.DuckDBPyConnection, candidate: str, served: str, key: list[str] | None
) -> tuple[int, int, int | None, dict[str, int]]:
    """The diff done in Python: rows added, removed, changed, values changed per column."""
    after = [r[0] for r in con.execute(f"select column_name from (describe {candidate})").fetchall()]
    before = {r[0] for r in con.execute(f"select column_name from (describe {served})").fetchall()}
    columns = [c for c in after if c in before]
    new_rows, old_rows = _rows(con, candidate, columns), _rows(con, served, columns)
    if key is None:
        new_count, old_count = Counter(new_rows), Counter(old_rows)
        return sum((new_count - old_count).values()), sum((old_count - new_count).values()), None, {}
    at = [columns.index(k) for k in key]
    new = {tuple(r[i] for i in at): r for r in new_rows}
    old = {tuple(r[i] for i in at): r for r in old_rows}
    both = new.keys() & old.keys()
    per_column = {c: sum(new[k][i] != old[k][i] for k in both) for i, c in enumerate(columns) if c not in key}
    changed = sum(new[k] != old[k] for k in both)
    columns_changed = {c: n for c, n in per_column.items() if n}
    return len(new.keys() - old.keys()), len(old.keys() - new.keys()), changed, columns_changed


@pytest.mark.e2e
def test_the_diff_counts_what_changed_and_its_gate_keeps_a_night_from_readers(tmp_path: Path) -> None:
    settings = (PROJECT_DIR / "dbt_project.yml").read_text()
    assert GATED in settings
    share = "{{ env_var('DUSK_TEST_GATE', '1') | float }}"
    gate = f'      +meta: {{diff: {{max_changed_share: "{share}", severity: error}}}}\n'
    project = project_copy(tmp_path / "project", {"dbt_project.yml": settings.replace(GATED, GATED + gate)})
    ws = Workspace(tmp_path / "ws", project=project)
    ws.root.mkdir()
    strict = {"DUSK_TEST_GATE": "0.001"}

    first = ws.cli("run", env_extra=strict)
    assert first.returncode == 0, first.stdout[-3000:]
    served = ws.data_dir / "served.duckdb"
    published = served.stat().st_mtime_ns
    assert {d["status"] for d in ws.last_run()["diff"]} == {"new"}

    days = ws.cli("simulate", "--days", "1").stdout
    night = ws.cli("run", check=False, env_extra=strict)
    record = ws.last_run()
    assert night.returncode == 1 and record["status"] == "failed", night.stdout[-3000:]
    assert served.stat().st_mtime_ns == published, "a night past an error gate reached readers"
    breached = {f["target"] for f in record["findings"] if f["check"] == "data_diff"}
    assert "marts.orders" in breached and all(b.startswith("marts.") for b in breached)
    assert "data_diff error" in night.stdout and "Changes for readers" in night.stdout

    # the counts against the same comparison in Python, on the unpublished candidate and the served copy
    diffs = {d["relation"]: d for d in record["diff"]}
    assert {d["status"] for d in diffs.values()} == {"compared", "unchanged"}, "the first night was published whole"
    with duckdb.connect(str(ws.warehouse), read_only=True) as con:
        con.execute(f"attach '{served}' as readers (read_only)")
        for relation, d in diffs.items():
            schema, table = relation.split(".")
            added, removed, changed, columns = _expected(
                con, f'"{schema}"."{table}"', f'readers."{schema}"."{table}"', d["key"]
            )
            if d["status"] == "unchanged":  # not compared: readers have it as it is
                assert (added, removed, changed or 0) == (0, 0, 0), relation
            else:
                assert (d["added"], d["removed"], d["changed"], d["columns"]) == (added, removed, changed, columns)
        ledger_rows = con.execute(
            "select count(*) from dusk_ledger.data_diff where run_id = ?", [record["run_id"]]
        ).fetchone()
    assert ledger_rows == (len(diffs),)
    # and against the simulator's truth: the products it repriced, and no product added or removed
    match = re.search(r"products: \+(\d+) ~(\d+) -0", days)
    assert match, days
    inserted, repriced = int(match[1]), int(match[2])
    products = diffs["staging.stg_shop__products"]
    assert repriced and (products["added"], products["removed"], products["changed"]) == (inserted, 0, repriced)
    assert products["columns"]["unit_price"] == repriced

    # the gate raised: the same data is published, its diff counted again the same way
    again = ws.cli("run", env_extra={"DUSK_TEST_GATE": "1"})
    assert again.returncode == 0 and ws.last_run()["status"] == "success"
    assert served.stat().st_mtime_ns != published
    redone = {d["relation"]: d for d in ws.last_run()["diff"]}
    assert redone["marts.orders"]["changed"] == diffs["marts.orders"]["changed"]
    assert all(f["check"] != "data_diff" for f in ws.last_run()["findings"])
    # what readers had unchanged was not copied again, and readers have exactly the warehouse's relations
    published = ws.last_run()["published"]
    identical = {
        r
        for r, d in redone.items()
        if d["status"] == "unchanged" or not (d["added"] or d["removed"] or d["changed"] or d["added_columns"])
    }
    assert set(published["reused"]) == identical and identical, published["reused"]
    with duckdb.connect(str(ws.warehouse), read_only=True) as con:
        con.execute(f"attach '{served}' as readers (read_only)")
        for relation in redone:
            schema, table = relation.split(".")
            mine, theirs = f'"{schema}"."{table}"', f'readers."{schema}"."{table}"'
            for one, other in ((mine, theirs), (theirs, mine)):
                extra = con.execute(f"select count(*) from (from {one} except all from {other})").fetchone()
                assert extra == (0,), relation
