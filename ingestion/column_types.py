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


_FINER = r"\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}[.,]\d{6}0*[1-9]"
FINER_THAN_MICROSECONDS = re.compile(_FINER)
"""The start of a timestamp's text with a digit below the microsecond (``...:05.1234567Z``):
every engine's timestamp holds microseconds, and each parser (Python's, dlt's, DuckDB's) would
cut the rest off without a word. Such a value stops the table or is quarantined instead."""

FINER_THAN_MICROSECONDS_REASON = (
    "has digits below the microsecond, which a timestamp does not hold (they would be cut off); "
    "declare the column text to keep it as written"
)


def finer_than_microseconds(value: str) -> str:
    """DuckDB SQL that is true where the text ``value`` is a timestamp with a digit below the
    microsecond: :data:`FINER_THAN_MICROSECONDS`'s pattern (RE2 reads it alike), anchored."""
    return f"regexp_matches({value}, '^{_FINER}')"
