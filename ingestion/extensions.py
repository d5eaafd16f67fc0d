"""DuckDB's extensions, from the ``duckdb-extension-*`` wheels on PyPI: LOADed from the file the
package ships, never INSTALLed (nothing is downloaded at run time). And dlt's SQL client of raw,
which needs one on a lake."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any


def extension_path(module: str) -> Path:
    """The extension binary shipped in the ``duckdb-extension-*`` package ``module``."""
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        wheel = module.replace("_", "-")
        raise RuntimeError(f"the DuckDB extension package {wheel} is missing; reinstall the requirements") from exc
    files = list(Path(package.__file__ or "").parent.rglob("*.duckdb_extension"))
    if not files:
        raise RuntimeError(f"the DuckDB extension in the {module} package is missing; reinstall the requirements")
    return files[0]


def load_extension(con: Any, module: str) -> None:
    """LOAD the extension of the package ``module`` into a DuckDB connection."""
    con.execute(f"LOAD '{extension_path(module)}'")


LAKE_EXTENSIONS = ("duckdb_extension_avro", "duckdb_extension_iceberg")


def raw_client(pipeline: Any) -> Any:
    """dlt's SQL client of the pipeline's dataset (raw). On a lake (the filesystem destination) it
    is an in-memory DuckDB that reads the Iceberg tables with DuckDB's iceberg extension, LOADed
    here from its wheel: DuckDB would otherwise try to download it."""
    client = pipeline.sql_client()
    if pipeline.destination.destination_name == "filesystem":
        client.credentials.extensions = [f"'{extension_path(m)}'" for m in LAKE_EXTENSIONS]
        client.credentials.global_config = {
            **(client.credentials.global_config or {}),
            "autoinstall_known_extensions": False,
        }
    return client


def fix_iceberg_upsert() -> None:
    """Correct pyiceberg 0.12's upsert, which dlt's ``upsert`` merge strategy writes Iceberg raw
    tables with, for a table whose schema changed (a new source column, which dlt adds with
    ``union_by_name`` just before it upserts).

    pyiceberg reads the rows the upsert matches with the schema of the branch's last snapshot,
    not the table's current one (a schema change makes no snapshot), and the upsert fails with
    "Target schema's field names are not matching the table's field names" (found by the
    simulate-check suite on Spark: apache/iceberg-python#2467 and #3105, open, with fixes in open
    pull requests). Until a release carries the fix, an upsert into such a table first commits an
    empty append, whose snapshot carries the current schema; the upsert then reads with it and
    writes every value (tests/ingestion/test_lake.py). Applied once; harmless once pyiceberg
    fixed it (the schemas then agree and nothing is committed)."""
    from pyiceberg.table import Table

    if getattr(Table.upsert, "_dusk_fixed", False):
        return
    upsert = Table.upsert

    def aligned_upsert(self: Table, *args: Any, **kwargs: Any) -> Any:
        snapshot = self.current_snapshot()
        if snapshot is not None and snapshot.schema_id != self.metadata.current_schema_id:
            with self.transaction() as tx, tx.update_snapshot().fast_append():
                pass  # no files: a snapshot that records the current schema
        return upsert(self, *args, **kwargs)

    aligned_upsert._dusk_fixed = True  # type: ignore[attr-defined]
    # Through Any: mypy sees pyiceberg's types only where the Spark extra is installed.
    table_class: Any = Table
    table_class.upsert = aligned_upsert
