"""The one map of declared column types (``columns:`` in sources.yml) to what holds them:
DuckDB's type (files and streams are typed in DuckDB) and dlt's column hint (APIs)."""

from __future__ import annotations

import re
from typing import Any

TYPES: dict[str, tuple[str, str]] = {
    # declared: (DuckDB type, dlt data_type)
    "text": ("VARCHAR", "text"),
    "integer": ("INTEGER", "bigint"),
    "bigint": ("BIGINT", "bigint"),
    "double": ("DOUBLE", "double"),
    "boolean": ("BOOLEAN", "bool"),
    "date": ("DATE", "date"),
    "timestamp": ("TIMESTAMPTZ", "timestamp"),
    "json": ("JSON", "json"),
}
"""``decimal(p,s)`` is declared with its precision and scale and kept as is."""

DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")
COLUMN_TYPE = re.compile(r"^(" + "|".join(TYPES) + r"|decimal\(\d+,\s*\d+\))$")
"""A declared type of a files, stream or API column."""
DATABASE_COLUMN_TYPE = re.compile(r"^(text|decimal\((\d+),(\d+)\))$")
"""A declared type of a database column: an override of what the source's type would give."""


def duck_type(declared: str) -> str:
    """The DuckDB type of a declared column type (``decimal(p,s)`` as is)."""
    return TYPES[declared][0] if declared in TYPES else declared.upper()


def dlt_column(declared: str) -> dict[str, Any]:
    """dlt's column hint for a declared type."""
    decimal = DECIMAL.match(declared)
    if decimal:
        return {"data_type": "decimal", "precision": int(decimal[1]), "scale": int(decimal[2])}
    return {"data_type": TYPES[declared][1]}
