"""The sizes ingestion works within: one value each, used by every kind."""

MEMORY_LIMIT = "512MB"
"""DuckDB's memory limit for every instance ingestion runs: the source scanner, the CDC change
resolution, and the warehouse while dlt loads (DuckDB spills to disk beyond it)."""

KEY_CHUNK = 1000
"""Keys per ``IN`` list, in queries to a source database and to raw (a key list never becomes one
query of unbounded size)."""
