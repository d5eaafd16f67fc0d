"""DuckDB's extensions, from the ``duckdb-extension-*`` wheels on PyPI: LOADed from the file the
package ships, never INSTALLed (nothing is downloaded at run time). And dlt's SQL client of raw,
which needs one on a lake."""

from __future__ import annotations

import functools
import importlib
import threading
from pathlib import Path
from typing import Any

_VERIFIED: set[tuple[str, int, int, int]] = set()
"""Extension files DuckDB's signature check passed in this process: (path, inode, size, mtime)."""
_VERIFIED_LOCK = threading.Lock()


@functools.cache
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


def _stamp(path: Path) -> tuple[str, int, int, int]:
    stat = path.stat()
    return str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns


def verified_config(module: str) -> dict[str, Any]:
    """The config for ``duckdb.connect`` of a connection that will LOAD ``module``'s extension:
    DuckDB checks an extension's signature at every LOAD by hashing the whole file (the SQLite
    scanner is 34 MB: 55 ms a LOAD, measured; a quiet demo night LOADs one for each table it
    reads, ~0.6 s). Once the check passed in this process for the file as it is now (same inode,
    size and modification time), later connections skip it; the first LOAD, and any after the
    file changed, is checked."""
    with _VERIFIED_LOCK:
        verified = _stamp(extension_path(module)) in _VERIFIED
    return {"allow_unsigned_extensions": True} if verified else {}


def load_extension(con: Any, module: str) -> None:
    """LOAD the extension of the package ``module`` into a DuckDB connection (see
    :func:`verified_config`: a connection that checks signatures records the file as checked)."""
    path = extension_path(module)
    stamp = _stamp(path)
    con.execute(f"LOAD '{path}'")
    row = con.execute("SELECT current_setting('allow_unsigned_extensions')").fetchone()
    if row is not None and not row[0]:
        with _VERIFIED_LOCK:
            _VERIFIED.add(stamp)


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

    @functools.wraps(upsert)
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
