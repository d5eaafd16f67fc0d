"""What every source column type becomes in raw: the one table, for PostgreSQL, MySQL/MariaDB and SQLite.

Each reflected column gets
- the **raw type** (a DuckDB type, which dlt records in its schema),
- the **read**: the column as DuckDB's scanner reads it, or, where the scanner would lose values
  (a numeric wider than DECIMAL(38) or without precision becomes DOUBLE, a ``timetz`` loses its
  offset, a MySQL zero date becomes NULL), a source-side expression that reads the exact text,
- a **special** predicate in the source's own SQL that finds values the raw type cannot hold
  (NaN in a ``numeric(p,s)``, ``infinity`` dates, zero or partial MySQL dates, SQLite values of
  another storage class than the declared type). Rows it finds stop the table with their keys and
  the fix: nothing is ever replaced by another value (0, NULL, a clamp).

A ``columns:`` entry of a database table in sources.yml overrides the raw type: ``text`` reads the
source's own text of the value (always exact), ``decimal(p,s)`` a decimal, checked at the source to
hold every value exactly.

docs/sources.md's "Source types" table is this module in prose; keep the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from ingestion.column_types import DATABASE_COLUMN_TYPE

MAX_DECIMAL = 38
"""DuckDB's widest DECIMAL (and dlt's): wider numerics land as text."""


@dataclass(frozen=True)
class SourceColumn:
    """One reflected source column and how raw holds it."""

    name: str
    source_type: str
    """The column's type as the source declares it, e.g. ``numeric(12,4)``, ``int unsigned``."""
    raw_type: str
    """The DuckDB type raw holds, e.g. ``DECIMAL(12,4)``, ``VARCHAR``, ``TIMESTAMPTZ``."""
    nullable: bool = True
    source_expr: str | None = None
    """An expression in the source's SQL that reads the column (as text) where DuckDB's scanner
    would lose values; None: the scanner reads it."""
    special: str | None = None
    """A predicate in the source's SQL that is true for values the raw type cannot hold."""
    naive_timestamp: bool = False
    """A timestamp without time zone at the source (its values are taken as UTC)."""
    note: str = ""
    """Why the column lands as it does, when that is not the obvious type (shown in the summary)."""

    @property
    def expression(self) -> str:
        """The DuckDB expression that gives the raw value from the column as read."""
        return f'CAST("{self.name}" AS {self.raw_type})'

    def filter_value(self, value: Any) -> Any:
        """The value to compare the *source* column with, so the filter is pushed down to the
        source database (a cast on the column would make PostgreSQL scan the whole table): a
        naive source timestamp is compared with the UTC wall time."""
        if self.naive_timestamp and isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value


def _decimal(precision: int | None, scale: int | None) -> str:
    return f"DECIMAL({precision}, {scale or 0})"


def quote(kind: str, name: str) -> str:
    """An identifier in the source's own SQL."""
    if kind == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def as_text(kind: str, name: str) -> str:
    """The column's value as the source's own text."""
    col = quote(kind, name)
    if kind == "postgresql":
        # format() calls the type's output function, as the server writes a value; a cast to text
        # may differ (inet '::1' -> '::1/128'). It writes NULL as '', hence the CASE.
        return f"CASE WHEN {col} IS NOT NULL THEN format('%s', {col}) END"
    if kind == "mysql":
        return f"CAST({col} AS CHAR)"
    return f"CAST({col} AS TEXT)"


def compiled(type_: Any, dialect: sa.Dialect) -> str:
    """The type as the source's DDL spells it (lower case)."""
    try:
        return str(type_.compile(dialect=dialect)).lower()
    except Exception:  # a type SQLAlchemy reflects but cannot compile (NullType)
        return type(type_).__name__.lower()


def raw_column(
    kind: str, name: str, type_: Any, nullable: bool, dialect: sa.Dialect, override: str | None = None
) -> SourceColumn:
    """Map one reflected column (SQLAlchemy type ``type_``) to its raw column."""
    source_type = compiled(type_, dialect)
    base = {"name": name, "source_type": source_type, "nullable": nullable}
    if override:
        return _overridden(kind, name, type_, override, base)
    if kind == "postgresql":
        return _postgres(name, type_, base)
    if kind == "mysql":
        return _mysql(name, type_, base)
    return _sqlite(name, type_, base)


def _overridden(kind: str, name: str, type_: Any, override: str, base: dict[str, Any]) -> SourceColumn:
    match = DATABASE_COLUMN_TYPE.match(override)
    assert match, override
    # SQLite has no query function in DuckDB: its scanner reads the value, DuckDB casts it
    text = None if kind == "sqlite" else as_text(kind, name)
    if match.group(1) == "text":
        return SourceColumn(**base, raw_type="VARCHAR", source_expr=text, note="declared text")
    precision, scale = int(match.group(2)), int(match.group(3))
    col = quote(kind, name)
    # a value that needs more digits or more scale than declared: the cast would round or fail
    special = f"({col} <> ROUND({col}, {scale}) OR ABS({col}) >= {10 ** (precision - scale)})"
    if kind == "postgresql" and _is_numeric(type_):
        special = f"({col}::text IN ('NaN', 'Infinity', '-Infinity') OR {special})"
    return SourceColumn(
        **base,
        raw_type=_decimal(precision, scale),
        source_expr=text,
        special=special,
        note=f"declared decimal({precision},{scale})",
    )


def _is_numeric(type_: Any) -> bool:
    return isinstance(type_, sa.Numeric) and not isinstance(type_, sa.Float)


def _postgres(name: str, type_: Any, base: dict[str, Any]) -> SourceColumn:
    col = f'"{name}"'
    if isinstance(type_, postgresql.MONEY):
        # the server's text of money depends on lc_monetary ('$1,000.00'); its numeric is exact
        return SourceColumn(**base, raw_type="DECIMAL(38, 4)", source_expr=f"{col}::numeric::text")
    if _is_numeric(type_):
        if type_.precision and type_.precision <= MAX_DECIMAL:
            # a numeric with a precision cannot hold an infinity (the server refuses one), only
            # NaN, which PostgreSQL compares equal to itself: a numeric comparison, no text cast
            # per value (4 such columns of 6 M rows: 1.4 s -> 0.8 s of the server's time)
            special = f"{col} = 'NaN'"
            return SourceColumn(**base, raw_type=_decimal(type_.precision, type_.scale), special=special)
        why = "without precision" if not type_.precision else f"wider than {MAX_DECIMAL} digits"
        return SourceColumn(
            **base,
            raw_type="VARCHAR",
            source_expr=f"{col}::text",
            note=f'numeric {why}: lands as its exact text; declare columns: {{{name}: "decimal(p,s)"}} for a decimal',
        )
    if isinstance(type_, sa.Float):
        return SourceColumn(**base, raw_type="DOUBLE")  # real widens exactly to double
    if isinstance(type_, sa.DateTime):
        naive = not type_.timezone
        return SourceColumn(
            **base,
            raw_type="TIMESTAMPTZ",
            naive_timestamp=naive,
            special=f"{col} IN ('infinity', '-infinity')",
        )
    if isinstance(type_, sa.Date):
        return SourceColumn(**base, raw_type="DATE", special=f"{col} IN ('infinity', '-infinity')")
    if isinstance(type_, sa.Time):
        if type_.timezone:  # the offset is part of the value: keep the server's text, '12:00:00+05:30'
            return SourceColumn(**base, raw_type="VARCHAR", source_expr=f"{col}::text", note="time with time zone")
        return SourceColumn(**base, raw_type="TIME")
    if isinstance(type_, postgresql.INTERVAL):
        return SourceColumn(**base, raw_type="VARCHAR", source_expr=f"{col}::text", note="interval as text")
    if isinstance(type_, sa.Boolean):
        return SourceColumn(**base, raw_type="BOOLEAN")
    if isinstance(type_, sa.Integer):
        raw = {"smallint": "SMALLINT", "integer": "INTEGER"}.get(base["source_type"], "BIGINT")
        return SourceColumn(**base, raw_type=raw)
    if isinstance(type_, sa.JSON):  # json, jsonb: the scanner reads the server's text
        return SourceColumn(**base, raw_type="JSON")
    if isinstance(type_, postgresql.ARRAY):
        # arrays become JSON; to_json writes every element exactly (numerics, timestamps, nested arrays)
        return SourceColumn(**base, raw_type="JSON", source_expr=f"to_json({col})::text")
    if isinstance(type_, sa.LargeBinary):
        return SourceColumn(**base, raw_type="BLOB")
    if isinstance(type_, sa.String | sa.Enum | sa.Uuid):  # text, varchar, char, enum, uuid
        return SourceColumn(**base, raw_type="VARCHAR")
    # bit, varbit, inet, cidr, macaddr, xml, ranges, geometric and user types: the server's text
    return SourceColumn(**base, raw_type="VARCHAR", source_expr=as_text("postgresql", name))


_MYSQL_UNSIGNED = {"tinyint": "SMALLINT", "smallint": "INTEGER", "mediumint": "INTEGER", "int": "BIGINT"}
_MYSQL_SIGNED = {"tinyint": "TINYINT", "smallint": "SMALLINT", "mediumint": "INTEGER", "int": "INTEGER"}
_MYSQL_BAD_DATE = "(MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0)"
"""Zero (``0000-00-00``) and partial (``2024-00-10``) dates, which no date type holds."""


def _mysql(name: str, type_: Any, base: dict[str, Any]) -> SourceColumn:
    col = f"`{name}`"
    if isinstance(type_, mysql.BIT):
        if (type_.length or 1) == 1:
            return SourceColumn(**base, raw_type="BOOLEAN")
        return SourceColumn(
            **base, raw_type="VARCHAR", source_expr=f"LPAD(BIN({col}), {type_.length}, '0')", note="bits as text"
        )
    if isinstance(type_, sa.Integer):
        word = type(type_).__name__.lower()
        word = word if word in ("tinyint", "smallint", "mediumint", "bigint") else "int"
        unsigned = bool(getattr(type_, "unsigned", False))
        if word == "bigint":
            return SourceColumn(**base, raw_type="DECIMAL(20, 0)" if unsigned else "BIGINT")
        # tinyint(1) is MySQL's boolean, but it holds -128..127: raw keeps the integer
        return SourceColumn(**base, raw_type=(_MYSQL_UNSIGNED if unsigned else _MYSQL_SIGNED)[word])
    if _is_numeric(type_):
        if type_.precision and type_.precision <= MAX_DECIMAL:
            return SourceColumn(**base, raw_type=_decimal(type_.precision, type_.scale))
        return SourceColumn(
            **base,
            raw_type="VARCHAR",
            source_expr=f"CAST({col} AS CHAR)",
            note=f"decimal wider than {MAX_DECIMAL} digits: lands as its exact text; "
            f'declare columns: {{{name}: "decimal(p,s)"}} for a decimal',
        )
    if isinstance(type_, sa.Float):
        return SourceColumn(**base, raw_type="DOUBLE")
    if isinstance(type_, mysql.YEAR):
        return SourceColumn(**base, raw_type="SMALLINT")
    if isinstance(type_, sa.DateTime):  # datetime, timestamp (read in UTC: the session's zone is +00:00)
        return SourceColumn(**base, raw_type="TIMESTAMPTZ", naive_timestamp=True, special=_MYSQL_BAD_DATE.format(c=col))
    if isinstance(type_, sa.Date):
        return SourceColumn(**base, raw_type="DATE", special=_MYSQL_BAD_DATE.format(c=col))
    if isinstance(type_, sa.Time):  # -838:59:59 .. 838:59:59 is no time of day: the server's text
        return SourceColumn(**base, raw_type="VARCHAR", note="time as text (MySQL's range exceeds a day)")
    if isinstance(type_, sa.JSON):
        return SourceColumn(**base, raw_type="JSON")
    if isinstance(type_, sa.LargeBinary | mysql.BINARY | mysql.VARBINARY):
        return SourceColumn(**base, raw_type="BLOB")
    return SourceColumn(**base, raw_type="VARCHAR")  # char, varchar, text, enum, set


def _sqlite(name: str, type_: Any, base: dict[str, Any]) -> SourceColumn:
    """SQLite types are affinities: any column may hold a value of any storage class. A value of
    another class than the declared type is found by ``typeof`` and stops the table."""
    col = f'"{name}"'
    if isinstance(type_, sa.Boolean):
        bad = f"({col} IS NOT NULL AND ({col} NOT IN (0, 1) OR typeof({col}) <> 'integer'))"
        return SourceColumn(**base, raw_type="BOOLEAN", special=bad)
    if isinstance(type_, sa.Integer):
        return SourceColumn(**base, raw_type="BIGINT", special=f"typeof({col}) NOT IN ('integer', 'null')")
    if _is_numeric(type_):
        bad = f"typeof({col}) NOT IN ('integer', 'real', 'null')"
        if type_.precision and type_.precision <= MAX_DECIMAL:
            scale = type_.scale or 0
            # SQLite keeps what it was given (12.345 in a numeric(10,2)): the cast would round it
            bad += f" OR ROUND({col}, {scale}) <> {col} OR ABS({col}) >= {10 ** (type_.precision - scale)}"
            return SourceColumn(**base, raw_type=_decimal(type_.precision, type_.scale), special=f"({bad})")
        return SourceColumn(**base, raw_type="DOUBLE", special=bad, note="SQLite stores numeric as a float")
    if isinstance(type_, sa.Float):
        return SourceColumn(**base, raw_type="DOUBLE", special=f"typeof({col}) NOT IN ('integer', 'real', 'null')")
    if isinstance(type_, sa.DateTime):
        # a text with a digit below the microsecond too: the cast would cut it off (the length
        # first: SQLite stops at it for every text too short for a 7th digit, the usual case)
        fraction = f"instr({col}, '.')"
        finer = (
            f"length({col}) > 26 AND substr({col}, {fraction} + 1, 6) GLOB '[0-9][0-9][0-9][0-9][0-9][0-9]' "
            f"AND substr(ltrim(substr({col}, {fraction} + 7), '0'), 1, 1) GLOB '[1-9]'"
        )
        return SourceColumn(
            **base,
            raw_type="TIMESTAMPTZ",
            naive_timestamp=True,
            special=f"(typeof({col}) NOT IN ('text', 'null') OR ({finer}))",
        )
    if isinstance(type_, sa.Date):
        return SourceColumn(**base, raw_type="DATE", special=f"typeof({col}) NOT IN ('text', 'null')")
    if isinstance(type_, sa.LargeBinary):
        return SourceColumn(**base, raw_type="BLOB")
    if isinstance(type_, sa.String):  # text affinity stores numbers as text: only a blob is foreign
        return SourceColumn(**base, raw_type="VARCHAR", special=f"typeof({col}) = 'blob'")
    # no declared type (or one SQLAlchemy does not know): the scanner reads bytes
    return SourceColumn(**base, raw_type="BLOB", note="no declared type: raw keeps the bytes")
