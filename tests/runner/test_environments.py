"""Environments: dev and ci beside prod, each with a warehouse of its own, and slim CI.

A change to one model is checked in ``dev`` with ``--defer``: only it, what it feeds and the
unpublished views above it are built, everything else is read from prod's published data; prod's
served data and state are untouched; ``dusk --env dev diff`` says what the change does to prod's
data, counted against the data itself; ``make ci-slim``'s command does the same in ``ci``. The
environment reads the sources on its own: prod's archived files, its own stream consumer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dusk.settings import Settings, SettingsError
from dusk.steps.prepare import in_environment
from ingestion.declaration import load_sources
from tests.conftest import PROJECT_DIR, Workspace
from tests.helpers import project_copy

NAME = "cast(products.product_name as varchar(100)) as product_name"
UPPER = "cast(upper(products.product_name) as varchar(100)) as product_name"


def test_an_environment_has_its_own_warehouse_and_shares_sources_and_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUSK_PG_DATABASE", "shop_dw")
    prod = Settings.from_env(data_dir=tmp_path)
    dev = Settings.from_env(data_dir=tmp_path, env="dev")
    assert (prod.env, prod.data_dir, prod.warehouse) == ("prod", tmp_path, tmp_path / "warehouse.duckdb")
    assert dev.data_dir == tmp_path / "env" / "dev" and dev.warehouse == dev.data_dir / "dev.duckdb"
    assert dev.target_path == prod.target_path / "env" / "dev" and dev.state_dir == dev.data_dir / "state"
    assert (dev.postgres.database, prod.postgres.database) == ("shop_dw_dev", "shop_dw")
    assert (dev.secrets_dir, dev.demo_dir, dev.landing_dir) == (prod.secrets_dir, prod.demo_dir, prod.landing_dir)
    assert (dev.prod_warehouse, dev.prod_served, dev.prod_state_dir) == (
        prod.warehouse,
        prod.served_path,
        prod.state_dir,
    )
    with pytest.raises(SettingsError, match="DUSK_ENV"):
        Settings.from_env(data_dir=tmp_path, env="Dev; drop")
    with pytest.raises(SettingsError, match="database name"):
        Settings.from_env(data_dir=tmp_path, env="warehouse")

    specs = load_sources(PROJECT_DIR / "ingestion" / "sources.yml")
    stream, files = in_environment(specs["web"], "dev"), in_environment(specs["marketing"], "dev")
    assert stream.option("durable") == f"{specs['web'].option('durable') or 'dusk_web'}_dev"
    assert (files.option("archive"), files.option("read_archive")) == (False, True)
    cdc = next(s for s in specs.values() if s.kind == "database")
    assert in_environment(cdc, "dev").slot == cdc.slot, "no CDC table: the slot is not the source's to rename"


def _ran(record: dict[str, Any]) -> set[str]:
    """The dbt nodes a run built or tested (exposures have nothing to run)."""
    nodes = record["dbt"]["nodes"]
    return {n["unique_id"] for n in nodes if n["status"] != "unchanged" and n["resource_type"] != "exposure"}


def _count(path: Path, query: str, attach: Path | None = None) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        if attach is not None:
            con.execute(f"attach '{attach}' as readers (read_only)")
        row = con.execute(query).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.e2e
def test_dev_checks_a_change_against_prod_without_touching_it(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "project", {})
    ws = Workspace(tmp_path / "ws", project=project)
    ws.root.mkdir()
    ws.cli("run")
    served = ws.data_dir / "served.duckdb"
    published, prod_state = served.stat().st_mtime_ns, (ws.data_dir / "state" / "current").read_text()

    model = project / "models" / "marts" / "catalog" / "products.sql"
    assert NAME in model.read_text()
    model.write_text(model.read_text().replace(NAME, UPPER))
    out = ws.cli("--env", "dev", "run", "--defer")
    dev = ws.data_dir / "env" / "dev"
    record = json.loads((dev / "runs" / "last_run.json").read_text())
    assert record["status"] == "success", out.stdout[-3000:]
    ran = _ran(record)
    manifest = json.loads((ws.root / "target" / "env" / "dev" / "manifest.json").read_text())
    unpublished = {
        u for u, n in manifest["nodes"].items() if n["resource_type"] == "model" and n["schema"] == "intermediate"
    }
    built = {u for u in ran if u.split(".")[0] in ("model", "snapshot", "seed")}
    assert built == {"model.dusk.products"} | unpublished, "a deferred run built more than the change and the views"
    for test in (u for u in ran if u.startswith("test.")):  # tests of what was built, nothing else
        assert set(manifest["nodes"][test]["depends_on"]["nodes"]) & built, test
    assert served.stat().st_mtime_ns == published, "a dev run wrote prod's served data"
    assert (ws.data_dir / "state" / "current").read_text() == prod_state, "a dev run moved prod's state"

    # what the change does to prod's data, and the same counted on the data
    diff = ws.cli("--env", "dev", "diff")
    renamed = _count(
        dev / "dev.duckdb",
        "select count(*) from readers.marts.products where product_name != upper(product_name)",
        attach=served,
    )
    assert renamed > 0
    assert "marts.products" in diff.stdout and f"{renamed:,}" in diff.stdout, diff.stdout

    # the environment read the sources itself: prod's archived files, the stream through its own consumer
    streamed = _count(ws.warehouse, "select count(*) from information_schema.tables where table_schema = 'raw_web'")
    for table in ("raw_marketing.marketing_spend", *(["raw_web.web_events"] if streamed else [])):  # NATS is up
        query = f"select count(*) from {table}"
        assert _count(dev / "dev.duckdb", query) == _count(ws.warehouse, query) > 0, table

    # slim CI: the same check in ci, as make ci-slim runs it
    ws.cli("--env", "ci", "run", "--defer")
    assert _ran(json.loads((ws.data_dir / "env" / "ci" / "runs" / "last_run.json").read_text())) == ran
