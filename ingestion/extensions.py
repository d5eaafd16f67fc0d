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
