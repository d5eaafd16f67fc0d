"""The DuckDB warehouse: one embedded file (the default).

DuckDB shares one database instance between the connections of a process that open the same file
with the same configuration, and refuses a connection with another one ("Can't open a connection
to same database file with a different configuration"). dlt's and dbt-duckdb's connections set
nothing at connect time (dlt applies its settings, :data:`SETTINGS`, with ``SET`` once
connected), so every connection here sets nothing either: :meth:`DuckDBWarehouse.connect` is the
only ``duckdb.connect`` of the warehouse in the runner. The night holds one connection from start
to end, so every step (and every ingest thread's dlt connection) shares one instance.

DuckDB lets one process write a file, and no other process read it meanwhile: readers in other
processes open it read-only, or the served file when a run holds it (:meth:`DuckDBWarehouse.read`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

from dusk.warehouse import LedgerError, Reading, Warehouse
from ingestion.limits import MEMORY_LIMIT

SETTINGS = {"preserve_insertion_order": False, "memory_limit": MEMORY_LIMIT}
"""DuckDB settings of the warehouse (a parquet file loads on all of DuckDB's threads; memory
stays capped, DuckDB spills beyond it)."""
LOAD_JOBS = 2
"""Files of one load package dlt loads into the warehouse side by side (dlt's default is 20).
Each INSERT already runs on DuckDB's threads: at TPC-H scale factor 5 (30 M rows, 25 parquet
files) twenty at once ran out of :data:`SETTINGS`' memory limit and the full load failed; with
two it took 64.6 s at 0.79 GiB (with one, 68.6 s at 0.70 GiB). At scale factor 1 five side by
side gained nothing over one INSERT of all (4.2-4.7 s against 3.8-4.0 s; measured)."""
TRANSFORM_MEMORY_LIMIT = "256MB"
"""DuckDB's memory limit once the sources are loaded (dbt, the audit, the data diff, the publish).
DuckDB keeps what it read cached up to its limit, on top of the process's own ~0.5 GiB (dbt, dlt,
Arrow): at 512MB a churn night at 100x the demo peaked at 1.02-1.04 GiB, at 256MB at 0.78-0.81 GiB,
in the same time (41-43 s against 40.5-41 s, measured)."""


class DuckDBWarehouse(Warehouse):
    """The DuckDB warehouse file (``DUSK_WAREHOUSE``)."""

    engine = "duckdb"
    loader_file_format = "parquet"
    """dlt's default here, SQL insert statements, cost a 100x demo's 300k API records 35 s and
    0.9 GiB to load; DuckDB reads parquet files in bulk, in bounded memory."""

    @property
    def path(self) -> Any:
        return self.settings.warehouse

    def exists(self) -> bool:
        return bool(self.path.exists())

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(self.path))
        try:
            yield con
        finally:
            con.close()

    def after_ingest(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"SET memory_limit = '{TRANSFORM_MEMORY_LIMIT}'")

    @contextmanager
    def read(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, Reading]]:
        """The warehouse read-only, or the served file when a run holds the warehouse."""
        s = self.settings
        candidates = [(s.warehouse, "warehouse", True), (s.served_path, "served file (last published night)", False)]
        errors = []
        for path, what, is_warehouse in candidates:
            if not path.exists():
                continue
            try:
                con = duckdb.connect(str(path), read_only=True)
            except duckdb.IOException as exc:
                errors.append(f"{path}: {exc}")
                continue
            try:
                yield con, Reading(str(path), what, is_warehouse)
            finally:
                con.close()
            return
        raise LedgerError("no run ledger to read: " + ("; ".join(errors) or "no run yet (make run)"))

    def destination(self) -> Any:
        """dlt's duckdb destination (dlt applies :data:`SETTINGS` once connected), loading
        :data:`LOAD_JOBS` files at a time."""
        import dlt

        return dlt.destinations.duckdb(
            credentials={"database": str(self.path), "global_config": dict(SETTINGS)},
            max_parallel_load_jobs=LOAD_JOBS,
        )
