"""Reads source tables through DuckDB's scanner extensions (postgres, mysql, sqlite).

DuckDB attaches the source database read-only and streams a table straight into parquet files:
PostgreSQL is scanned over several connections at once with binary COPY, and the files are written
by DuckDB's own parallel writer with its memory capped. The files are handed to dlt as they are
(no Python row ever exists), which is what brings a full load close to the server's own COPY speed.

The extension binaries come from the ``duckdb-extension-*`` wheels on PyPI and are LOADed from
the installed package: nothing is downloaded at run time.

SQLAlchemy reflects each table first. The reflected types decide the casts in the SELECT list
(decimals to their declared precision, naive timestamps to UTC ``TIMESTAMPTZ``), so the same table
lands with the same types from every engine.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa

MEMORY_LIMIT = "512MB"
"""DuckDB's cap while reading a source: a table of any size streams through this much memory."""
FILE_SIZE = "64MB"
"""Parquet files are cut at about this size (several files load in parallel)."""
ROW_GROUP_SIZE = 122_880
"""Rows per parquet row group (DuckDB's default); a file holds whole row groups."""

_EXTENSIONS = {
    "postgresql": ("duckdb_extension_postgres_scanner", "postgres"),
    "mysql": ("duckdb_extension_mysql_scanner", "mysql"),
    "mariadb": ("duckdb_extension_mysql_scanner", "mysql"),
    "sqlite": ("duckdb_extension_sqlite_scanner", "sqlite"),
}


class SourceSchemaError(RuntimeError):
    """The source table no longer matches what raw holds (dropped column, changed type, gone)."""


def load_extension(con: duckdb.DuckDBPyConnection, module: str) -> None:
    """LOAD the extension binary shipped in the ``duckdb-extension-*`` package ``module``."""
    package = importlib.import_module(module)
    files = list(Path(package.__file__ or "").parent.rglob("*.duckdb_extension"))
    if not files:
        raise RuntimeError(f"the DuckDB extension in the {module} package is missing; reinstall requirements.txt")
    con.execute(f"LOAD '{files[0]}'")


def _quote(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def engine_kind(url: sa.URL) -> str:
    """``postgresql``, ``mysql`` or ``sqlite`` for a SQLAlchemy URL."""
    backend = url.get_backend_name()
    if backend not in _EXTENSIONS:
        raise ValueError(f"unsupported database {backend!r}: use PostgreSQL, MySQL/MariaDB or SQLite")
    return "mysql" if backend == "mariadb" else backend


@contextmanager
def attach(url: sa.URL, threads: int = 2) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with the source attached read-only as ``src``.

    Credentials travel in a DuckDB secret, never in the ATTACH string, so no error message can
    echo them."""
    kind = engine_kind(url)
    module, ext_type = _EXTENSIONS[kind]
    con = duckdb.connect(config={"threads": threads, "memory_limit": MEMORY_LIMIT})
    try:
        con.execute("SET TimeZone = 'UTC'")  # naive source timestamps are read as UTC
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        load_extension(con, module)
        if kind == "sqlite":
            con.execute(f"ATTACH {_quote(url.database)} AS src (TYPE sqlite, READ_ONLY)")
        else:
            secret = f"src_{uuid.uuid4().hex[:8]}"
            parts = {
                "HOST": url.host or "localhost",
                "PORT": url.port or (5432 if kind == "postgresql" else 3306),
                "USER": url.username or "",
                "PASSWORD": url.password or "",
                "DATABASE": url.database or "",
            }
            body = ", ".join(f"{k} {_quote(v)}" for k, v in parts.items())
            con.execute(f"CREATE TEMPORARY SECRET {secret} (TYPE {ext_type}, {body})")
            con.execute(f"ATTACH '' AS src (TYPE {ext_type}, SECRET {secret}, READ_ONLY)")
        yield con
    finally:
        con.close()


@dataclass(frozen=True)
class SourceColumn:
    """One reflected source column and the expression that reads it with its declared type."""

    name: str
    expression: str
    nullable: bool
    naive_timestamp: bool = False
    """A timestamp without time zone at the source (its values are taken as UTC)."""

    def filter_literal(self, value: Any) -> str:
        """A literal to compare the *source* column with, so the filter is pushed down to the
        source database (a cast on the column would make PostgreSQL scan the whole table)."""
        if self.naive_timestamp and isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return sql_literal(value)


def _python_type(type_: Any) -> type | None:
    try:
        return type_.python_type
    except NotImplementedError:
        return None


def _expression(name: str, type_: Any) -> str:
    col = f'"{name}"'
    if isinstance(type_, sa.Numeric) and not isinstance(type_, sa.Float):
        if type_.precision and type_.precision <= 38:
            return f"CAST({col} AS DECIMAL({type_.precision}, {type_.scale or 0}))"
        return col
    if isinstance(type_, sa.DateTime):
        # naive source timestamps are taken as UTC, as dlt stores them
        return f"CAST({col} AS TIMESTAMPTZ)"
    if isinstance(type_, sa.Date):
        return f"CAST({col} AS DATE)"
    if isinstance(type_, sa.Boolean):
        return f"CAST({col} AS BOOLEAN)"
    if _python_type(type_) is timedelta:  # PostgreSQL's INTERVAL is not an sa.Interval
        return f"CAST({col} AS VARCHAR)"  # dlt has no interval type: raw keeps its text, '1 day 02:03:04'
    return col


def reflect_columns(engine: sa.Engine, table: str, exclude: tuple[str, ...] = ()) -> list[SourceColumn]:
    """The table's columns in source order, without the excluded ones. Raises
    ``sa.exc.NoSuchTableError`` when the table is gone."""
    columns = sa.inspect(engine).get_columns(table)
    if not columns:
        raise sa.exc.NoSuchTableError(table)
    return [
        SourceColumn(
            c["name"],
            _expression(c["name"], c["type"]),
            bool(c.get("nullable", True)),
            isinstance(c["type"], sa.DateTime) and not c["type"].timezone,
        )
        for c in columns
        if c["name"] not in exclude
    ]


def select_list(columns: list[SourceColumn]) -> str:
    """The SELECT list that reads the source columns with their declared types."""
    return ", ".join(f'{c.expression} AS "{c.name}"' for c in columns)


def sql_literal(value: Any) -> str:
    """A SQL literal for a cursor or key value (typed, quoted; never raw text)."""
    if isinstance(value, bool) or value is None:
        raise TypeError(f"unsupported cursor or key value {value!r}")
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, datetime):
        kind = "TIMESTAMPTZ" if value.tzinfo else "TIMESTAMP"
        return f"{kind} {_quote(value.isoformat(sep=' '))}"
    if isinstance(value, date):
        return f"DATE {_quote(value.isoformat())}"
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"unsupported cursor or key value of type {type(value).__name__}")


def source_relation(kind: str, table: str) -> str:
    """The attached table as DuckDB names it."""
    if kind == "postgresql":
        return f'src.public."{table}"'
    return f'src."{table}"'
