"""`dusk erase`: a customer forgotten everywhere dusk keeps a copy. After two nights that loaded,
snapshotted, built and published a customer with canary values (a name that reaches every layer
in clear, and an e-mail that raw keeps in clear and staging hashes), the customer is deleted at
the source and erased: neither canary nor its hash is found in any table of the warehouse or the
served file, nor in any file of the data folder, dbt's target or logs (the canary suite's search);
the ledger records the key's salted hash; the next night passes and brings nothing back."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from pathlib import Path

import duckdb
import pytest

from tests.conftest import Workspace

pytestmark = pytest.mark.e2e


def _found(path: Path, values: dict[str, str]) -> list[str]:
    """The canaries in any table of a DuckDB file."""
    found = []
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute(
            "select table_schema, table_name from information_schema.tables where table_catalog = current_database()"
        ).fetchall()
        for schema, table in tables:
            text = str(con.execute(f'select * from "{schema}"."{table}"').fetchall())
            found += [f"{name} in {path.name} {schema}.{table}" for name, v in values.items() if v in text]
    return found


def test_an_erased_customer_is_found_nowhere(workspace: Workspace) -> None:
    ws = workspace
    ws.cli("run")
    name, email = f"Zyx{secrets.token_hex(6)}", f"erase-{secrets.token_hex(6)}@example.test"
    with sqlite3.connect(ws.shop_db) as shop:
        (cid,) = shop.execute(
            "select customer_id from customers where customer_id not in (select customer_id from orders) "
            "order by customer_id limit 1"
        ).fetchone()
        shop.execute(
            "update customers set first_name = ?, email = ?, updated_at = '2030-01-01 00:00:00.000000' "
            "where customer_id = ?",
            [name, email, cid],
        )
    ws.cli("run")
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        (hashed,) = wh.execute("select email from staging.stg_shop__customers where customer_id = ?", [cid]).fetchone()
        versions = wh.execute("select count(*) from snapshots.customers_snapshot where customer_id = ?", [cid])
        assert versions.fetchone() == (2,)  # the first night's and the canary's
    canaries = {"name": name, "e-mail": email, "e-mail hash": hashed}
    assert hashed != email and _found((ws.data_dir / "served.duckdb"), canaries), "the canaries reached the served file"

    with sqlite3.connect(ws.shop_db) as shop:
        shop.execute("delete from customers where customer_id = ?", [cid])
    out = ws.cli("erase", "--source", "shop", "--table", "customers", "--key", f"email={email}")
    assert "Erased 1 key(s) of shop.customers (erase " in out.stdout, out.stdout
    assert "raw_shop.customers: 1" in out.stdout and "snapshots.customers_snapshot: 2" in out.stdout
    assert "served staging.stg_shop__customers: 1" in out.stdout and "served marts.customers: 1" in out.stdout

    found = _found(ws.warehouse, canaries) + _found((ws.data_dir / "served.duckdb"), canaries)
    searched = 0
    for root in (ws.data_dir, ws.root / "target", ws.root / "logs"):
        for path in root.rglob("*"):
            if path.is_file() and path.parent.name != "demo":
                data = path.read_bytes()
                found += [f"{n} in {path}" for n, v in canaries.items() if v.encode() in data]
                searched += 1
    assert searched > 50 and not found, "\n".join(found)

    salt = (ws.data_dir / "secrets" / "pii_salt").read_text().strip()
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        recorded = wh.execute("select source, table_name, key_hash, scope from dusk_ledger.erasures").fetchall()
    assert recorded[0][:3] == ("shop", "customers", hashlib.sha256(f"{salt}|{cid}".encode()).hexdigest())
    assert "raw_shop.customers: 1" in recorded[0][3]

    night = ws.cli("run", check=False)
    assert night.returncode == 0, night.stdout + night.stderr
    assert not _found(ws.warehouse, canaries) and not _found((ws.data_dir / "served.duckdb"), canaries)
    with duckdb.connect(str(ws.data_dir / "served.duckdb"), read_only=True) as served:
        assert served.execute("select count(*) from marts.customers where customer_id = ?", [cid]).fetchone() == (0,)
        assert served.execute("select count(*) from dusk_ledger.erasures").fetchone() == (1,)  # published too


def test_an_erasure_that_cannot_be_served_is_refused_and_changes_nothing(workspace: Workspace) -> None:
    out = workspace.cli("erase", "--source", "shop", "--table", "customers", check=False)
    assert out.returncode == 1 and "name the subject" in out.stderr, out.stderr
    out = workspace.cli("erase", "--source", "shop", "--table", "invoices", "--key", "id=1", check=False)
    assert out.returncode == 1 and "declares no table invoices" in out.stderr, out.stderr
    workspace.cli("run")
    out = workspace.cli("erase", "--source", "shop", "--table", "customers", "--key", "email=nobody@x", check=False)
    assert out.returncode == 1 and "nothing was erased" in out.stderr, out.stderr
