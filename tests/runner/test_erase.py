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

from dusk.erase import EraseRefused, subjects_from
from tests.conftest import Workspace

pytestmark = pytest.mark.e2e


def _tables(con: duckdb.DuckDBPyConnection, where: str, values: dict[str, str]) -> list[str]:
    found = []
    tables = con.execute(
        "select table_schema, table_name from information_schema.tables where table_catalog = current_database() "
        "and table_schema not in ('information_schema', 'pg_catalog')"
    ).fetchall()
    for schema, table in tables:
        text = str(con.execute(f'select * from "{schema}"."{table}"').fetchall())
        found += [f"{name} in {where} {schema}.{table}" for name, v in values.items() if v in text]
    return found


def _found(ws: Workspace, values: dict[str, str]) -> list[str]:
    """The canaries in any table of the warehouse or the served copy (on PostgreSQL: its served_*
    schemas, in the same database)."""
    with ws.read() as con:
        found = _tables(con, "warehouse", values)
    if not ws.pg_database:
        with duckdb.connect(str(ws.data_dir / "served.duckdb"), read_only=True) as con:
            found += _tables(con, "served file", values)
    return found


def _served(ws: Workspace, query: str, params: list[object]) -> tuple:
    """One row of ``query`` on the served copy; ``served.`` prefixes a reader-facing schema."""
    if ws.pg_database:
        with ws.read() as con:
            return con.execute(query.replace("served.", "served_"), params).fetchone()
    with duckdb.connect(str(ws.data_dir / "served.duckdb"), read_only=True) as con:
        return con.execute(query.replace("served.", ""), params).fetchone()


@pytest.mark.parametrize("engine_workspace", ["duckdb", "postgres"], indirect=True)
def test_an_erased_customer_is_found_nowhere(engine_workspace: Workspace) -> None:
    ws = engine_workspace
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
    with ws.read() as wh:
        (hashed,) = wh.execute("select email from staging.stg_shop__customers where customer_id = ?", [cid]).fetchone()
        versions = wh.execute("select count(*) from snapshots.customers_snapshot where customer_id = ?", [cid])
        assert versions.fetchone() == (2,)  # the first night's and the canary's
    canaries = {"name": name, "e-mail": email, "e-mail hash": hashed}
    assert hashed != email and _served(ws, "select count(*) from served.marts.customers where first_name = ?", [name])
    assert _served(ws, "select count(*) from served.marts.customers where first_name = ?", [name]) == (1,)

    with sqlite3.connect(ws.shop_db) as shop:
        shop.execute("delete from customers where customer_id = ?", [cid])
    out = ws.cli("erase", "--source", "shop", "--table", "customers", "--key", f"email={email}")
    assert "Erased 1 key(s) of shop.customers (erase " in out.stdout, out.stdout
    assert "raw_shop.customers: 1" in out.stdout and "snapshots.customers_snapshot: 2" in out.stdout
    served = "served_" if ws.pg_database else "served "
    assert f"{served}staging.stg_shop__customers: 1" in out.stdout, out.stdout
    assert f"{served}marts.customers: 1" in out.stdout, out.stdout

    found = _found(ws, canaries)
    searched = 0
    for root in (ws.data_dir, ws.root / "target", ws.root / "logs"):
        for path in root.rglob("*"):
            if path.is_file() and path.parent.name != "demo":
                data = path.read_bytes()
                found += [f"{n} in {path}" for n, v in canaries.items() if v.encode() in data]
                searched += 1
    assert searched > 50 and not found, "\n".join(found)

    salt = (ws.data_dir / "secrets" / "pii_salt").read_text().strip()
    with ws.read() as wh:
        recorded = wh.execute("select source, table_name, key_hash, scope from dusk_ledger.erasures").fetchall()
    assert recorded[0][:3] == ("shop", "customers", hashlib.sha256(f"{salt}|{cid}".encode()).hexdigest())
    assert "raw_shop.customers: 1" in recorded[0][3]

    out = ws.cli("erase", "--source", "shop", "--table", "customers", "--key", "email=nobody@x", check=False)
    assert out.returncode == 1 and "nothing was erased" in out.stderr, out.stderr
    # by its primary key, an erased subject is erased again everywhere (how a half-done erasure finishes)
    out = ws.cli("erase", "--source", "shop", "--table", "customers", "--key", f"customer_id={cid}")
    assert "erased before, its copies erased again: {'customer_id': " in out.stdout, out.stdout

    night = ws.cli("run", check=False)
    assert night.returncode == 0, night.stdout + night.stderr
    assert not _found(ws, canaries)
    assert _served(ws, "select count(*) from served.marts.customers where customer_id = ?", [cid]) == (0,)
    assert _served(ws, "select count(*) from served.dusk_ledger.erasures", []) == (2,)  # published too


def test_an_erasure_without_a_subject_or_table_is_refused(workspace: Workspace) -> None:
    out = workspace.cli("erase", "--source", "shop", "--table", "customers", check=False)
    assert out.returncode == 1 and "name the subject" in out.stderr, out.stderr
    out = workspace.cli("erase", "--source", "shop", "--table", "invoices", "--key", "id=1", check=False)
    assert out.returncode == 1 and "declares no table invoices" in out.stderr, out.stderr


def test_subjects_come_from_keys_or_a_csv_file(tmp_path: Path) -> None:
    assert subjects_from(["product_id=12", "warehouse=AMS"], None) == [{"product_id": "12", "warehouse": "AMS"}]
    batch = tmp_path / "keys.csv"
    batch.write_text("email\na@example.test\nb=c@example.test\n")
    assert subjects_from([], batch) == [{"email": "a@example.test"}, {"email": "b=c@example.test"}]
    batch.write_text("product_id,warehouse\n12,AMS\n13\n")
    with pytest.raises(EraseRefused, match=r"keys.csv, line 3: expected one value per column"):
        subjects_from([], batch)
    with pytest.raises(EraseRefused, match="expected column=value"):
        subjects_from(["42"], None)
