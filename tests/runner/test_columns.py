"""Column-level lineage, traced from compiled SQL with sqlglot: each model column's origins down
to raw columns, a hash on the way remembered, a column that only decides a condition told
apart; a reader-facing column carrying a ``pii`` column's value unhashed is an error finding of
the audit; what was traced is reused while the SQL and the columns it reads stay the same.
(The demo's own lineage, in a real night and its report: tests/test_end_to_end.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from dusk import columns
from dusk.settings import Settings
from dusk.steps.audit import unhashed_pii

COMPILED = {
    "models/staging/stg_customers.sql": (
        "with cleaned as (select customer_id, lower(trim(email)) as email, name from raw_shop.customers)\n"
        "select customer_id, sha256((select salt from dusk_private.pii_salt) || email) as email, name,\n"
        "  case when email is null or email not like '%@%' then 'invalid_email' end as problem\n"
        "from cleaned"
    ),
    "models/marts/customers.sql": "select customer_id, email as email_hash, problem from staging.stg_customers",
    "models/marts/leaky.sql": (
        "select c.customer_id, upper(r.email) as contact, r.name\n"
        "from staging.stg_customers c join raw_shop.customers r on r.customer_id = c.customer_id"
    ),
}


def _node(kind: str, schema: str, name: str, parents: list[str], pii: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "resource_type": kind,
        "schema": schema,
        "name": name,
        "alias": name,
        "identifier": name,
        "package_name": "dusk",
        "original_file_path": f"models/{schema}/{name}.sql",
        "config": {"materialized": "table"},
        "columns": {c: {"config": {"tags": ["pii"]}} for c in pii},
        "depends_on": {"nodes": parents},
    }


MANIFEST = {
    "sources": {"source.dusk.shop.customers": _node("source", "raw_shop", "customers", [], pii=("email", "name"))},
    "nodes": {
        "model.dusk.stg_customers": _node("model", "staging", "stg_customers", ["source.dusk.shop.customers"]),
        "model.dusk.customers": _node("model", "marts", "customers", ["model.dusk.stg_customers"]),
        "model.dusk.leaky": _node(
            "model", "marts", "leaky", ["model.dusk.stg_customers", "source.dusk.shop.customers"]
        ),
    },
}


def _project(tmp_path: Path) -> tuple[Settings, duckdb.DuckDBPyConnection]:
    settings = Settings(tmp_path / "data", tmp_path / "w.duckdb", tmp_path / "target", False, 1)
    for path, sql in COMPILED.items():
        (settings.target_path / "compiled" / "dusk" / path).parent.mkdir(parents=True, exist_ok=True)
        (settings.target_path / "compiled" / "dusk" / path).write_text(sql)
    (settings.target_path / "manifest.json").write_text(json.dumps(MANIFEST))
    con = duckdb.connect()
    for ddl in (
        "create schema raw_shop",
        "create schema staging",
        "create schema marts",
        "create schema dusk_private",
        "create table raw_shop.customers (customer_id int, email varchar, name varchar)",
        "create table dusk_private.pii_salt (salt varchar)",
        "create table staging.stg_customers (customer_id int, email varchar, name varchar, problem varchar)",
        "create table marts.customers (customer_id int, email_hash varchar, problem varchar)",
        "create table marts.leaky (customer_id int, contact varchar, name varchar)",
    ):
        con.execute(ddl)
    return settings, con


def test_columns_are_traced_to_raw_with_hashes_and_conditions_told_apart(tmp_path: Path) -> None:
    settings, con = _project(tmp_path)
    warehouse = columns.catalog(con, ["raw_shop", "staging", "marts", "dusk_private"])
    traced = columns.trace(MANIFEST, settings.target_path, warehouse, "duckdb")
    assert not any(t.error for t in traced.values())

    def origins(relation: str, column: str) -> set[tuple[str, bool, bool]]:
        return {
            (f"{o.relation}.{o.column}", o.hashed, o.condition) for o in columns.to_sources(traced, relation, column)
        }

    assert origins("marts.customers", "email_hash") == {
        ("raw_shop.customers.email", True, False),
        ("dusk_private.pii_salt.salt", True, False),
    }
    assert origins("marts.customers", "problem") == {("raw_shop.customers.email", False, True)}
    assert origins("marts.leaky", "contact") == {("raw_shop.customers.email", False, False)}
    assert origins("marts.customers", "customer_id") == {("raw_shop.customers.customer_id", False, False)}

    pii = columns.pii_columns(MANIFEST)
    assert columns.unhashed_pii(traced, pii, ["marts"]) == [
        "marts.leaky.contact <- raw_shop.customers.email",
        "marts.leaky.name <- raw_shop.customers.name",
    ]

    # kept and read back: the same SQL and columns are not traced again
    columns.save(settings.column_lineage_path, traced)
    kept = columns.load(settings.column_lineage_path)
    assert kept == traced
    marker = columns.Traced(key=kept["marts.customers"].key, columns={"kept": []})
    again = columns.trace(MANIFEST, settings.target_path, warehouse, "duckdb", {**kept, "marts.customers": marker})
    assert again["marts.customers"] is marker
    (settings.target_path / "compiled" / "dusk" / "models/marts/customers.sql").write_text(
        "select customer_id, email as email_hash from staging.stg_customers"
    )
    changed = columns.trace(MANIFEST, settings.target_path, warehouse, "duckdb", {**kept, "marts.customers": marker})
    assert set(changed["marts.customers"].columns) == {"customer_id", "email_hash"}


def test_the_audit_fails_a_reader_facing_column_that_carries_pii_unhashed(tmp_path: Path) -> None:
    settings, con = _project(tmp_path)
    findings = unhashed_pii(settings, con)
    assert [(f.check, f.severity, f.target) for f in findings] == [
        ("pii_unhashed", "error", "marts.leaky.contact"),
        ("pii_unhashed", "error", "marts.leaky.name"),
    ]
    assert "raw_shop.customers.email" in findings[0].message and "hash it in staging" in findings[0].message
    assert settings.column_lineage_path.exists()  # kept for the report and for you


def test_each_engines_hash_is_recognised(tmp_path: Path) -> None:
    """PostgreSQL's and Spark's PII hash (macros/pii.sql) count as hashes, as DuckDB's does."""
    settings, con = _project(tmp_path)
    warehouse = columns.catalog(con, ["raw_shop", "staging", "marts", "dusk_private"])
    hashes = {
        "postgres": "encode(sha256(convert_to((select salt from dusk_private.pii_salt) || email, 'UTF8')), 'hex')",
        "spark": "sha2((select salt from dusk_private.pii_salt) || email, 256)",
    }
    staged = settings.target_path / "compiled" / "dusk" / "models/staging/stg_customers.sql"
    for engine, hashed in hashes.items():
        staged.write_text(f"select customer_id, {hashed} as email, name, null as problem from raw_shop.customers")
        traced = columns.trace(MANIFEST, settings.target_path, warehouse, engine)
        email = columns.to_sources(traced, "marts.customers", "email_hash")
        assert {(o.relation, o.hashed) for o in email} >= {("raw_shop.customers", True)}, engine
