"""Database sources (SQLite, PostgreSQL, MySQL/MariaDB) declared in sources.yml.

One code path for the three engines:

1. **Plan** (:mod:`.plan`, :mod:`.schema`): SQLAlchemy reflects every declared table. A table that vanished,
   a column that was dropped or changed type, a missing key or cursor column stops the source with
   a message naming it, before anything is extracted. For ``deletes: key_diff`` tables a cheap
   pass reads only the primary key and cursor of the source and of raw; it finds
   - keys that vanished from the source (hard deletes: merged back into raw with their last
     values, ``_is_deleted = true`` and ``_deleted_at`` = detection time),
   - keys whose source cursor differs from raw's but lies below the watermark (rows committed
     late with an older ``updated_at``: re-read by key, whatever their age),
   - keys back in the source that raw holds as deleted (a restore, or a key reused by a new row:
     re-read, with ``_restored_at`` = detection time, so the snapshot versions the return even
     when the row's ``updated_at`` is older than its deletion),
   - NULL or duplicate keys (the source fails: a merge would silently keep one of them).
2. **Extract** (:mod:`.extract`): DuckDB's scanner reads ``cursor >= start`` (plus the late
   keys) into parquet files that dlt imports as they are, declared with
   ``dlt.sources.incremental`` whose range was pushed down to SQL (``Incremental.advance``). dlt
   commits the cursor in the warehouse with the data, so a failed run never moves it.
"""

from ingestion.database.extract import database_source
from ingestion.database.ingest import credentials
from ingestion.database.plan import plan_source

__all__ = ["credentials", "database_source", "plan_source"]
