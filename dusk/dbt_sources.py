"""Keeps dbt's source definitions and ingestion/sources.yml from drifting apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dusk.settings import PROJECT_DIR
from ingestion.declaration import ConfigError, SourceSpec

STAGING_DIR = PROJECT_DIR / "models" / "staging"


def dbt_source_files(staging_dir: Path = STAGING_DIR) -> dict[str, Any]:
    """Every dbt source definition under models/staging, by source name."""
    found: dict[str, Any] = {}
    for path in sorted(staging_dir.glob("*/_*__sources.yml")):
        for source in (yaml.safe_load(path.read_text()) or {}).get("sources", []):
            found[source["name"]] = {**source, "_path": path}
    return found


def check_dbt_sources(specs: dict[str, SourceSpec], staging_dir: Path = STAGING_DIR) -> None:
    """Raise ConfigError unless every declared source has a dbt source with the same schema
    (the dlt dataset) and the same tables, and dbt declares no source that ingestion lacks."""
    dbt = dbt_source_files(staging_dir)
    problems = []
    for name, spec in specs.items():
        expected = f"models/staging/{name}/_{name}__sources.yml"
        if name not in dbt:
            problems.append(f"source {name!r} is in sources.yml but has no dbt source ({expected})")
            continue
        source = dbt[name]
        if source.get("schema") != spec.dataset:
            problems.append(f"dbt source {name!r}: schema is {source.get('schema')!r}, dlt loads {spec.dataset!r}")
        dbt_tables = {t["name"] for t in source.get("tables", [])}
        declared = {t.name for t in spec.tables}
        if dbt_tables != declared:
            problems.append(
                f"dbt source {name!r} ({source['_path'].name}) lists tables {sorted(dbt_tables)}, "
                f"sources.yml declares {sorted(declared)}"
            )
    for name in set(dbt) - set(specs):
        problems.append(f"dbt source {name!r} ({dbt[name]['_path'].name}) has no entry in ingestion/sources.yml")
    if problems:
        raise ConfigError("dbt sources and ingestion/sources.yml disagree:\n  - " + "\n  - ".join(problems))
