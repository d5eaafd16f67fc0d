"""dbt's sources are generated from sources.yml, their one declaration: the repository's files
are current (CI fails otherwise), and regenerating rewrites only what the declaration owns
(schema, tables, key tests, declared types, meta) and keeps everything else, comments included."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from dusk import generate
from dusk.settings import PROJECT_DIR
from ingestion.declaration import load_sources
from tests.helpers import sources

CHANGED = """
sources:
  shop:
    kind: database
    description: The shop.
    tables:
      customers:
        primary_key: customer_id
        cursor: updated_at
        write_disposition: merge
        deletes: key_diff
        columns:
          tier: text
      returns:
        primary_key: [order_id, line_no]
        cursor: returned_at
        write_disposition: merge
        deletes: none
"""


def test_the_repository_sources_are_generated_from_sources_yml() -> None:
    stale = [str(g.path.relative_to(PROJECT_DIR)) for g in generate.generate(sources()) if not g.current]
    assert stale == [], f"run `dusk generate sources`: {stale} do not say what sources.yml declares"
    assert generate.stray(sources()) == []


def test_regenerating_rewrites_what_the_declaration_owns_and_keeps_the_rest(tmp_path: Path) -> None:
    declared = tmp_path / "sources.yml"
    declared.write_text(CHANGED)
    (spec,) = load_sources(declared).values()
    before = generate.path_of("shop").read_text().replace("schema: raw_shop", "schema: raw_store")
    before = before.replace("# raw = staged + quarantined", "# my own note")
    text = generate.render(spec, before)
    assert generate.render(spec, text) == text  # regenerating a generated file changes nothing

    (source,) = yaml.safe_load(text)["sources"]
    assert source["schema"] == "raw_shop" and source["meta"] == {"kind": "database"}
    tables = {t["name"]: t for t in source["tables"]}
    assert list(tables) == ["customers", "returns"]  # products is no longer declared
    customers = tables["customers"]
    assert customers["description"].startswith("Shop customers")  # yours, kept
    assert any("rowcount_reconciles" in t for t in customers["data_tests"])
    columns = {c["name"]: c for c in customers["columns"]}
    assert columns["customer_id"]["data_tests"] == ["unique", "not_null"]
    assert columns["tier"]["data_type"] == "text" and "description" in columns["tier"]
    assert columns["email"]["config"] == {"tags": ["pii"]}
    assert "# my own note" in text and text.startswith(generate.HEADER)

    returns = tables["returns"]
    assert returns["meta"] == {
        "primary_key": ["order_id", "line_no"],
        "cursor": "returned_at",
        "write_disposition": "merge",
        "deletes": "none",
    }
    assert returns["data_tests"] == [{"unique_combination": {"arguments": {"columns": ["order_id", "line_no"]}}}]
    assert [(c["name"], c["data_tests"]) for c in returns["columns"]] == [
        ("order_id", ["not_null"]),
        ("line_no", ["not_null"]),
    ]


def test_stale_files_are_written_and_undeclared_sources_named(tmp_path: Path) -> None:
    shutil.copytree(PROJECT_DIR / "models" / "staging", tmp_path / "models" / "staging")
    specs = sources()
    payments = generate.path_of("payments", tmp_path)
    payments.write_text(payments.read_text().replace("data_type: decimal(12,2)", "data_type: double"))
    (tmp_path / "models" / "staging" / "crm").mkdir()
    (tmp_path / "models" / "staging" / "crm" / "_crm__sources.yml").write_text("version: 2\n")

    assert generate.write(specs, tmp_path) == [payments]
    assert "data_type: decimal(12,2)" in payments.read_text()
    assert generate.write(specs, tmp_path) == []
    assert generate.stray(specs, tmp_path) == [tmp_path / "models" / "staging" / "crm" / "_crm__sources.yml"]
