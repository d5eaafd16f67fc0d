"""Scaffolding a new source: `dusk new source` writes a draft declaration, `dusk discover`
reflects a database (on the real PostgreSQL and MariaDB: keys, composite keys, cursor
candidates, rows) or sniffs a landing folder (amounts as exact decimals, never doubles), and
what it proposes is a declaration sources.yml accepts as it is."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import sqlalchemy as sa

from dusk import discover
from dusk.settings import PROJECT_DIR
from ingestion.declaration import load_sources
from tests.conftest import Workspace


def _accepted(tmp_path: Path, name: str, kind: str, tables: list[discover.Table]) -> dict:
    """The proposal, as sources.yml, loaded by the declaration's own validation."""
    path = tmp_path / f"{name}.yml"
    path.write_text("sources:\n" + discover.proposal(name, kind, tables))
    return {t.name: t for t in load_sources(path)[name].tables}


def test_a_database_is_reflected_into_a_declaration_sources_yml_accepts(shop_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(shop_url)
    with engine.begin() as con:
        con.execute(sa.text("create table accounts (id integer primary key, name varchar(40), changed_on timestamp)"))
        con.execute(
            sa.text(
                "create table notes (account_id integer, n integer, body varchar(200), created_at timestamp, "
                "updated_at timestamp, primary key (account_id, n))"
            )
        )
        con.execute(sa.text("create table audit_log (line varchar(200))"))
        con.execute(sa.text("insert into accounts (id, name) values (1, 'a'), (2, 'b')"))
    engine.dispose()

    found = {t.name: t for t in discover.database(sa.make_url(shop_url))}
    assert (found["accounts"].primary_key, found["accounts"].cursors, found["accounts"].rows) == (
        ["id"],
        ["changed_on"],
        2,
    )
    assert found["notes"].primary_key == ["account_id", "n"]
    assert found["notes"].cursors == ["updated_at", "created_at"]  # the one named like a change first
    assert found["audit_log"].primary_key == [] and found["audit_log"].cursors == []

    tables = _accepted(tmp_path, "crm", "database", list(found.values()))
    assert tables["notes"].primary_key == ("account_id", "n") and tables["notes"].cursor == "updated_at"
    assert (tables["notes"].write_disposition, tables["notes"].deletes) == ("merge", "key_diff")
    assert "audit_log" not in tables  # no key: proposed commented out, for the user to decide
    assert "      # audit_log:   # 0 rows\n" in discover.proposal("crm", "database", list(found.values()))


def test_a_landing_folder_is_sniffed_and_amounts_stay_exact(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    (landing / "archive").mkdir(parents=True)
    (landing / "archive" / "spend_2026-01-01.csv").write_text("day,channel,amount,clicks\n2026-01-01,web,12.5,3\n")
    with gzip.open(landing / "spend_2026-01-02.csv.gz", "wt") as f:
        f.write("day,channel,amount,clicks\n2026-01-02,web,1234.125,4\n2026-01-02,mail,0.5,0\n")
    (landing / "rates_2026-01-02.jsonl").write_text('{"day": "2026-01-02", "currency": "EUR", "rate": 1.08}\n')

    found = {t.name: t for t in discover.landing(landing)}
    assert (found["spend"].pattern, found["spend"].files) == ("spend_*", 2)
    assert found["spend"].columns == {"day": "date", "channel": "text", "amount": "decimal(18,3)", "clicks": "bigint"}
    assert found["rates"].columns == {"day": "date", "currency": "text", "rate": "double"}
    tables = _accepted(tmp_path, "marketing", "files", list(found.values()))
    assert tables["spend"].pattern == "spend_*"


def test_new_source_writes_a_draft_that_discover_reads(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    sources = tmp_path / "sources.yml"
    shutil.copy(PROJECT_DIR / "ingestion" / "sources.yml", sources)
    crm = sa.create_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    with crm.begin() as con:
        con.execute(sa.text("create table accounts (id integer primary key, changed_on timestamp)"))
    crm.dispose()
    env = {"DUSK_SOURCES_FILE": str(sources), "SOURCES__CRM__CREDENTIALS": f"sqlite:///{tmp_path / 'crm.db'}"}

    added = ws.cli("new", "source", "crm", "--kind", "database", env_extra=env)
    assert "Added source 'crm' (database)" in added.stdout and "SOURCES__CRM__CREDENTIALS" in sources.read_text()
    again = ws.cli("new", "source", "crm", "--kind", "database", check=False, env_extra=env)
    assert again.returncode == 2 and "already declares a source 'crm'" in again.stderr
    proposed = ws.cli("discover", "crm", env_extra=env).stdout
    assert "      accounts:   # 0 rows\n        primary_key: id\n        cursor: changed_on\n" in proposed
    missing = ws.cli("discover", "crm", check=False, env_extra={**env, "SOURCES__CRM__CREDENTIALS": ""})
    assert missing.returncode == 1 and "no connection configured" in missing.stderr
