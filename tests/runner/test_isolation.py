"""Isolation inside dbt: a test failing in one source's models withholds only what that source
feeds. Readers keep last night's copy of it, get tonight's everything else, and the night is
``partial`` (exit 3). The project is a copy of this one with a singular test of the test's own
that fails once the marketing source holds a spend of 12.34 (anything else the demo loads passes
its tests: bad rows go to quarantine by design)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.conftest import Workspace, delete_demo_stream, pg_databases
from tests.helpers import project_copy

pytestmark = pytest.mark.e2e


def rows(ws: Workspace, relation: str, served: bool = True) -> list[tuple]:
    """A relation's rows as readers see it (``served``) or as the warehouse holds it."""
    if served and not ws.pg_database:
        with duckdb.connect(str(ws.data_dir / "served.duckdb"), read_only=True) as con:
            return sorted(con.execute(f"select * from {relation}").fetchall(), key=repr)
    with ws.read() as con:
        name = f"served_{relation}" if served else relation  # PostgreSQL: the served_* schemas
        return sorted(con.execute(f"select * from {name}").fetchall(), key=repr)


FAILS_ON_MARKETING = """
select * from {{ ref('stg_marketing__marketing_spend') }} where spend = 12.34
"""


@pytest.fixture(params=["duckdb", "postgres"])
def ws(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    project = project_copy(tmp_path / "project", {"data-tests/zz_marketing_spend_is_not_12_34.sql": FAILS_ON_MARKETING})
    (tmp_path / "ws").mkdir()
    with pg_databases(1 if request.param == "postgres" else 0) as databases:
        workspace = Workspace(tmp_path / "ws", pg_database=databases[0] if databases else None, project=project)
        yield workspace
        if workspace.sources_file.exists():
            delete_demo_stream(workspace.sources_file)


def test_a_failing_test_in_one_sources_models_withholds_only_what_it_feeds(ws: Workspace) -> None:
    ws.cli("run")
    roas_before = rows(ws, "marts.marketing_roas")
    orders_before = rows(ws, "staging.stg_shop__orders")

    # tonight: the shop moves on, and a landing file holds the spend the test refuses
    ws.cli("simulate", "--days", "1")
    (ws.data_dir / "landing" / "marketing_spend_2026-06-01.csv").write_text(
        "spend_date,channel,spend,clicks,currency_code\n2026-06-01,search,12.34,30,USD\n"
    )
    out = ws.cli("run", check=False)
    assert out.returncode == 3, out.stdout + out.stderr
    record = ws.last_run()
    assert record["status"] == "partial" and record["published"] is not None, record["error"]
    text = " ".join(out.stdout.split())
    assert "withheld marketing (test zz_marketing_spend_is_not_12_34 fail)" in text, text
    assert "readers keep last night's copy of what it feeds; the rest of tonight is published" in text
    assert "Run PARTIAL" in text

    withheld = set(record["dbt"]["withheld_relations"])
    assert {"staging.stg_marketing__marketing_spend", "marts.marketing_roas"} <= withheld
    assert "marts.customers" in withheld  # its revenue is converted with marketing's fx rates
    assert "staging.stg_shop__orders" not in withheld and "marts.products" not in withheld
    assert "marts.marketing_roas" in record["published"]["kept"]

    # readers: tonight's shop, last night's marketing
    assert rows(ws, "dusk_published.about")[0][0] == record["run_id"]
    assert not [r for r in rows(ws, "staging.stg_marketing__marketing_spend") if "12.34" in repr(r)]
    assert [r for r in rows(ws, "staging.stg_marketing__marketing_spend", served=False) if "12.34" in repr(r)]
    assert rows(ws, "marts.marketing_roas") == roas_before
    orders_now = rows(ws, "staging.stg_shop__orders")
    assert orders_now != orders_before
    assert orders_now == rows(ws, "staging.stg_shop__orders", served=False)

    # a failure no source explains (a test on a seed alone): nothing can be told apart, the night
    # fails and readers keep what they have
    (ws.project / "data-tests" / "zz_seed_only.sql").write_text("select * from {{ ref('currencies') }}\n")
    published = rows(ws, "dusk_published.about")[0][0]
    failed = ws.cli("run", check=False)
    assert failed.returncode == 1, failed.stdout
    assert "Not published" in " ".join(failed.stdout.split()) and "withheld" not in failed.stdout
    assert ws.last_run()["status"] == "failed" and rows(ws, "dusk_published.about")[0][0] == published
