"""The bookkeeping columns a database source adds to every raw table."""

DELETED_FLAG = "_is_deleted"
"""True for a row deleted at the source (found by key-diff or by CDC); raw keeps its last values."""
DELETED_AT = "_deleted_at"
"""When the delete was found (key-diff) or committed (CDC)."""
RESTORED_AT = "_restored_at"
"""Set on the row that brings back a key raw holds as deleted (a restore, or the key reused by a
new row): when key-diff found it back, or when CDC's change committed. NULL otherwise. Staging
takes it as the row's change time when the row's own is older, so snapshots version the return."""
LOAD_ID = "_dlt_load_id"
"""The dlt load that wrote the row."""
SOURCE_LSN = "_source_lsn"
"""CDC tables: the commit LSN of the change that produced the row (NULL for rows from a snapshot)."""
SOURCE_COMMITTED_AT = "_source_committed_at"
"""CDC tables: that change's commit time at the source."""
BOOKKEEPING = (DELETED_FLAG, DELETED_AT, RESTORED_AT, SOURCE_LSN, SOURCE_COMMITTED_AT)


def is_bookkeeping(column: str) -> bool:
    """True for dlt's and our own columns, which are not the source's."""
    return column.startswith("_dlt_") or column in BOOKKEEPING
