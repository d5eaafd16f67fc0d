"""dbt's sources are generated from sources.yml, their one declaration: the repository's files
are current (CI fails otherwise), and regenerating rewrites only what the declaration owns
(schema, tables, key tests, declared types, meta) and keeps everything else, comments included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from dusk import generate
from dusk.settings import PROJECT_DIR
from ingestion.declaration import load_sources
from tests.helpers import project_copy, sources

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


def test_generate_sources_check_exits_1_on_a_stale_file_and_generate_fixes_it(tmp_path: Path) -> None:
    """The CI form: `dusk generate sources --check` writes nothing and exits 1 naming the stale
    file; `dusk generate sources` rewrites it, and the check passes again."""
    project = project_copy(tmp_path / "project", {})
    stale = project / "models" / "staging" / "shop" / "_shop__sources.yml"
    stale.write_text(stale.read_text().replace("schema: raw_shop", "schema: raw_store"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSK_")}
    env["DUSK_SOURCES_FILE"] = str(PROJECT_DIR / "ingestion" / "sources.yml")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dusk", "generate", "sources", *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    check = cli("--check")
    assert check.returncode == 1
    assert "models/staging/shop/_shop__sources.yml is stale: run `dusk generate sources`" in check.stderr
    assert "raw_store" in stale.read_text()
    fixed = cli()
    assert fixed.returncode == 0 and "wrote models/staging/shop/_shop__sources.yml" in fixed.stdout
    assert cli("--check").returncode == 0
