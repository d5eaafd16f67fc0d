"""PostgreSQL change data capture: a logical replication slot (``pgoutput``) and a publication.

``dusk cdc setup <source>`` creates both; every run then

1. reads the server's current WAL position *before* reflecting and snapshotting, and bounds the run
   there (a change committed later waits for the next night);
2. advances the slot to the position dlt committed in the warehouse with the last loaded data,
   then *peeks* (never consumes) the changes up to the bound: so a run that dies anywhere before
   its load completes leaves the slot where it was, and the next run reads the same changes again;
3. writes the decoded changes to parquet parts (memory bounded by the part size), and resolves
   them per table in DuckDB into one row per key: the last change wins, a delete keeps the row's
   last known values with ``_is_deleted`` and ``_deleted_at`` = the commit time, values the
   stream does not carry (a delete's non-key columns, an unchanged TOASTed value) come from the
   key's earlier change in the batch or from raw;
4. stores the new position in dlt's source state, which dlt commits together with the rows.

A TRUNCATE marks every row of the table deleted at its commit time. A table's first load is a
snapshot through the scanner, taken after the bound was read, so it holds every change below
the bound; those changes are skipped for it.
"""

from ingestion.database.cdc.resolve import RawRows, Resolved, resolve
from ingestion.database.cdc.slot import (
    CdcError,
    ChangeBatch,
    TableChanges,
    cdc_tables,
    check_ready,
    connect,
    drop,
    log_text_converter,
    read_changes,
    setup,
)

__all__ = [
    "CdcError",
    "ChangeBatch",
    "RawRows",
    "Resolved",
    "TableChanges",
    "cdc_tables",
    "check_ready",
    "connect",
    "drop",
    "log_text_converter",
    "read_changes",
    "resolve",
    "setup",
]
