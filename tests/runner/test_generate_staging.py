"""The path of a new source, as a new user takes it: a `files` source declared by its
``sources.yml`` entry alone (no columns), ``dusk generate staging`` writes its staging layer the
project's way, and the first ``dusk run`` loads the files exactly (columns inferred), builds and
tests the new models, quarantines the row that breaks a rule, and documents it all in dbt's docs."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import Workspace, delete_demo_stream
from tests.helpers import project_copy

pytestmark = pytest.mark.e2e

NEW_SOURCE = """
  drops:
    kind: files
    description: A partner shop's daily files.
    files:
      path: {landing}
      archive: true
      max_bad_share: 0.5
    tables:
      partner_orders:
        pattern: "orders_*.csv*"
        primary_key: order_id
      partner_lines:
        pattern: "lines_*.jsonl"
        primary_key: [order_id, line_no]
      partner_rates:
        pattern: "rates_*.parquet"
"""


def test_a_new_files_source_reaches_raw_staging_and_docs_from_its_entry_alone(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "project", {})
    (tmp_path / "ws").mkdir()
    ws = Workspace(tmp_path / "ws", project=project)
    landing = tmp_path / "drops"
    landing.mkdir()
    try:
        ws.sources_file.write_text(ws.sources_file.read_text() + NEW_SOURCE.format(landing=landing))
        (landing / "orders_2026-01-01.csv").write_text(
            "order_id,placed_on,total,status,order\n"
            "1,2026-01-01,12345678901234567.89,paid,first\n"
            "2,2026-01-01,0.10,open,second\n"
            ",2026-01-01,3.00,open,no key\n"
        )
        (landing / "lines_2026-01-01.jsonl").write_text(
            '{"order_id": 1, "line_no": 1, "sku": "A-1", "qty": 2, "price": 19.99}\n'
            '{"order_id": 1, "line_no": 2, "sku": "B-7", "qty": 1, "price": 5.5}\n'
        )
        pq.write_table(pa.table({"currency": ["EUR"], "rate": [1.0 / 3]}), landing / "rates_2026-01-01.parquet")

        out = ws.cli("generate", "staging", "drops")
        folder = project / "models" / "staging" / "drops"
        written = sorted(p.name for p in folder.iterdir())
        assert written == [
            "_drops__models.yml",
            "_drops__sources.yml",
            "base_drops__partner_lines.sql",
            "base_drops__partner_orders.sql",
            "base_drops__partner_rates.sql",
            "quarantine_drops.sql",
            "stg_drops__partner_lines.sql",
            "stg_drops__partner_orders.sql",
            "stg_drops__partner_rates.sql",
        ], out.stdout
        documented = [m["name"] for m in yaml.safe_load((folder / "_drops__models.yml").read_text())["models"]]
        assert sorted(documented) == sorted(
            [
                f"{layer}_drops__{t}"
                for t in ("partner_orders", "partner_lines", "partner_rates")
                for layer in ("base", "stg")
            ]
            + ["quarantine_drops"]
        )
        base = (folder / "base_drops__partner_orders.sql").read_text()
        assert "{{ adapter.quote('order') }}," in base and "when order_id is null then 'missing_key'" in base
        lint = subprocess.run(  # the project's SQL conventions, as `make lint` checks its own models
            [str(Path(sys.executable).parent / "sqlfluff"), "lint", "models/staging/drops"],
            cwd=project,
            env={**ws.env(), "DUSK_WAREHOUSE": ":memory:"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
        texts = {p.name: p.read_text() for p in folder.iterdir()}
        again = ws.cli("generate", "staging", "drops")  # never overwrites: every table has its models
        assert "partner_orders: has staging models already" in again.stdout
        assert {p.name: p.read_text() for p in folder.iterdir()} == texts

        run = ws.cli("run")
        assert ws.last_run()["status"] == "success", run.stdout
        with ws.read() as con:
            assert con.execute(
                "select order_id, total, status from staging.stg_drops__partner_orders order by 1"
            ).fetchall() == [(1, Decimal("12345678901234567.89"), "paid"), (2, Decimal("0.10"), "open")]
            lines = con.execute("select sku, qty, price from staging.stg_drops__partner_lines order by 1")
            assert lines.fetchall() == [
                ("A-1", 2, Decimal("19.99")),
                ("B-7", 1, Decimal("5.50")),
            ]
            assert con.execute("select rate from staging.stg_drops__partner_rates").fetchall() == [(1.0 / 3,)]
            # a row without its key never reaches raw: ingestion quarantines it with file and line
            assert con.execute("select file, line, reason from raw_drops._quarantine").fetchall() == [
                ("orders_2026-01-01.csv", 4, "primary key column order_id is empty")
            ]
            assert con.execute("select count(*) from staging.quarantine_drops").fetchall() == [(0,)]
        record = ws.last_run()
        nodes = {n["name"]: n["status"] for n in record["dbt"]["nodes"]}
        assert nodes["stg_drops__partner_orders"] == "success"
        assert nodes["reconcile_raw_drops__partner_orders"] == "pass"
        assert nodes["unique_stg_drops__partner_orders_order_id"] == "pass"
        catalog = json.loads((ws.root / "target" / "catalog.json").read_text())
        assert "model.dusk.stg_drops__partner_orders" in catalog["nodes"]
        assert "source.dusk.drops.partner_lines" in catalog["sources"]
    finally:
        delete_demo_stream(ws.sources_file)
