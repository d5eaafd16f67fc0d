"""Reads source tables through DuckDB's scanner extensions (postgres, mysql, sqlite).

DuckDB attaches the source database read-only and streams a table straight into parquet files:
PostgreSQL is scanned over several connections at once with binary COPY, and the files are written
by DuckDB's own parallel writer with its memory capped. The files are handed to dlt as they are
(no Python row ever exists), which is what brings a full load close to the server's own COPY speed.

The extension binaries come from the ``duckdb-extension-*`` wheels on PyPI and are LOADed from
the installed package: nothing is downloaded at run time.

SQLAlchemy reflects each table first, in its named schema. The reflected types decide each
column's raw type (:mod:`ingestion.database.types`) and the casts in the SELECT list, so the same
table lands with the same types from every engine. Where the scanner's own mapping would lose
values (a numeric wider than 38 digits becomes DOUBLE), the read is one query run at the source
(``postgres_query``/``mysql_query``) that reads those columns as the server's exact text.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import duckdb
import sqlalchemy as sa

from ingestion.database.types import SourceColumn, quote, raw_column
from ingestion.extensions import load_extension, verified_config
from ingestion.limits import MEMORY_LIMIT

FILE_SIZE = "64MB"
"""Parquet files are cut at about this size (dlt loads a few at a time into the warehouse,
two on DuckDB: ``dusk.warehouse.duckdb_engine.LOAD_JOBS``)."""
ROW_GROUP_SIZE = 122_880
"""Rows per parquet row group (DuckDB's default); a file holds whole row groups."""
POSTGRES_SESSION = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres"
"""The settings of every PostgreSQL session that reads values as text (the scanner's queries at
the source, CDC's): ISO dates, UTC offsets and postgres-style intervals, whatever the server's or
the database's defaults (``ALTER DATABASE ... SET datestyle`` would otherwise change the text)."""

_EXTENSIONS = {
    "postgresql": ("duckdb_extension_postgres_scanner", "postgres"),
    "mysql": ("duckdb_extension_mysql_scanner", "mysql"),
    "mariadb": ("duckdb_extension_mysql_scanner", "mysql"),
    "sqlite": ("duckdb_extension_sqlite_scanner", "sqlite"),
}


class SourceSchemaError(RuntimeError):
    """The source table no longer matches what raw holds (dropped column, changed type, gone)."""


def _quote(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def engine_kind(url: sa.URL) -> str:
    """``postgresql``, ``mysql`` or ``sqlite`` for a SQLAlchemy URL."""
    backend = url.get_backend_name()
    if backend not in _EXTENSIONS:
        raise ValueError(f"unsupported database {backend!r}: use PostgreSQL, MySQL/MariaDB or SQLite")
    return "mysql" if backend == "mariadb" else backend


@contextmanager
def attach(
    url: sa.URL, threads: int = 2, timeouts: tuple[float, float] | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with the source attached read-only as ``src``.

    Credentials travel in a DuckDB secret, never in the ATTACH string, so no error message can
    echo them. ``timeouts`` (statement, connect; seconds, 0: none): on PostgreSQL the server
    cancels a query that runs longer (a query stuck behind a lock, a runaway scan) and a
    connection that cannot be made in time fails, so a hung source cannot hold the night."""
    kind = engine_kind(url)
    module, ext_type = _EXTENSIONS[kind]
    con = duckdb.connect(config={"threads": threads, "memory_limit": MEMORY_LIMIT, **verified_config(module)})
    try:
        con.execute("SET TimeZone = 'UTC'")  # naive source timestamps are read as UTC
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        load_extension(con, module)
        statement, connect = timeouts or (0.0, 0.0)
        if kind == "mysql":
            # tinyint(1) holds -128..127, not only booleans; TIMESTAMP columns are read in UTC
            con.execute("SET mysql_tinyint1_as_boolean = false")
            con.execute("SET mysql_session_time_zone = '+00:00'")
            # On MySQL 8 the scanner bounds each query by a MAX_EXECUTION_TIME hint it guesses
            # from the plan's cost, between 5 s and 300 s: a large table's full scan could be
            # cut off at a guess. The source's statement_timeout is the bound, as on PostgreSQL.
            # (MariaDB ignores the hint: its limit is the server's max_statement_time.)
            limit = int(statement * 1000)
            con.execute(f"SET mysql_query_timeout_enabled = {'true' if limit else 'false'}")
            if limit:
                con.execute(f"SET mysql_query_timeout_max_ms = {limit}")
                con.execute(f"SET mysql_query_timeout_min_ms = {limit}")
            if connect:
                _answers_in_time(url, connect)
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
            # libpq's options join the secret's fields: the session's text forms are pinned
            conninfo = "''"
            if kind == "postgresql":
                session = f"{POSTGRES_SESSION} -c statement_timeout={int(statement * 1000)}"
                conninfo = _quote(
                    f"options='{session}'" + (f" connect_timeout={max(1, int(connect))}" if connect else "")
                )
            con.execute(f"ATTACH {conninfo} AS src (TYPE {ext_type}, SECRET {secret}, READ_ONLY)")
            if kind == "postgresql" and not _scanner_shares_one_snapshot(con):
                con.execute("SET pg_use_ctid_scan = false")  # one connection: one snapshot
        yield con
    finally:
        con.close()


_SNAPSHOT_NOT_SHARED = (
    "SELECT pg_is_in_recovery() OR EXISTS (SELECT 1 FROM pg_stat_wal_receiver) "
    "OR EXISTS (SELECT 1 FROM pg_settings WHERE name LIKE 'rds%') AS alone"
)
"""The server cases where DuckDB's postgres scanner gives its connections no common snapshot."""


def _scanner_shares_one_snapshot(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the postgres scanner's connections will read a table from one snapshot.

    The scanner reads a table in page ranges over several connections, and gives them one
    snapshot (``pg_export_snapshot`` / ``SET TRANSACTION SNAPSHOT``) only on a primary server: on
    a standby (``pg_is_in_recovery()``, a WAL receiver) and on any server with an ``rds.*``
    setting (which it takes for Aurora: RDS too) each connection begins its own. A row updated
    between two of those beginnings is then read twice or not at all: on a 200k-row table whose
    every 50th row was updated during the read, 1-2 % of the rows came out missing or doubled in
    each of six tries (``tests/ingestion/test_consistent_read.py``). dusk reads such a server
    through one connection (``pg_use_ctid_scan = false``): slower, but one snapshot. The
    question is the scanner's own (its ``PostgresGetSnapshot``), asked the same way; a server
    that cannot answer it is read through one connection too."""
    try:
        row = con.execute(f"SELECT * FROM postgres_query('src', {_quote(_SNAPSHOT_NOT_SHARED)})").fetchone()
    except duckdb.Error:
        return False  # the read after it reports what is wrong with the server
    return row is not None and row[0] is False


def _answers_in_time(url: sa.URL, connect: float) -> None:
    """Refuse a MySQL/MariaDB server that does not greet and answer within ``connect`` seconds.

    DuckDB's mysql extension takes no connect or read timeout: its ATTACH would wait for a
    server that accepts the connection and never answers (a half-open link, a hung proxy) for
    as long as the operating system keeps the socket. PyMySQL, with both timeouts, asks first."""
    import pymysql  # type: ignore[import-untyped]

    try:
        probe = pymysql.connect(
            host=url.host or "localhost",
            port=url.port or 3306,
            user=url.username or "",
            password=url.password or "",
            database=url.database or None,
            connect_timeout=connect,
            read_timeout=connect,
            write_timeout=connect,
        )
    except pymysql.err.OperationalError as exc:
        if "timed out" not in str(exc):
            raise
        raise TimeoutError(
            f"the MySQL/MariaDB server at {url.host}:{url.port or 3306} did not answer within "
            f"connect_timeout={connect:g} s: check that the server is up and the network path to it"
        ) from None
    with probe, probe.cursor() as cursor:
        cursor.execute("SELECT 1")


def source_timeouts(spec: Any) -> tuple[float, float]:
    """A database source's (statement, connect) timeouts in seconds, from sources.yml."""
    return float(spec.option("statement_timeout")), float(spec.option("connect_timeout"))


def source_engine(url: sa.URL, spec: Any) -> sa.Engine:
    """SQLAlchemy's engine on the source (reflection, checks, samples) with the source's timeouts:
    PostgreSQL cancels a statement past ``statement_timeout``; MySQL/MariaDB's driver stops waiting
    for an answer after it (``read_timeout``); both give up connecting after ``connect_timeout``."""
    statement, connect = source_timeouts(spec)
    kind = engine_kind(url)
    args: dict[str, Any] = {}
    if kind == "postgresql":
        args = {"options": f"-c statement_timeout={int(statement * 1000)}"}
    elif kind == "mysql" and statement:
        args = {"read_timeout": int(statement)}
    if connect and kind != "sqlite":
        args["connect_timeout"] = max(1, int(connect))
    return sa.create_engine(url, connect_args=args)


def reflect_columns(
    engine: sa.Engine,
    table: str,
    schema: str | None,
    exclude: tuple[str, ...] = (),
    overrides: dict[str, str] | None = None,
) -> list[SourceColumn]:
    """The table's columns in source order, without the excluded ones, each with its raw type
    (:mod:`ingestion.database.types`). Raises ``sa.exc.NoSuchTableError`` when the table is gone.
    ``schema`` is named (:func:`default_schema` when the table declares none): the connection's
    search path never decides which table is read."""
    kind = engine_kind(engine.url)
    columns = sa.inspect(engine).get_columns(table, schema=schema)
    if not columns:
        raise sa.exc.NoSuchTableError(table)
    if kind == "mysql":
        checked = _json_checked(engine, table, schema)
        columns = [{**c, "type": sa.JSON()} if c["name"] in checked else c for c in columns]
    overrides = overrides or {}
    unknown = sorted(set(overrides) - {c["name"] for c in columns})
    if unknown:
        raise SourceSchemaError(f"columns {unknown} are declared (columns:) in sources.yml but not in the source table")
    return [
        raw_column(kind, c["name"], c["type"], bool(c.get("nullable", True)), engine.dialect, overrides.get(c["name"]))
        for c in columns
        if c["name"] not in exclude
    ]


_JSON_VALID = re.compile(r"json_valid\(`((?:[^`]|``)+)`\)", re.IGNORECASE)


def _json_checked(engine: sa.Engine, table: str, schema: str | None) -> set[str]:
    """MariaDB's JSON columns: a JSON column there is a LONGTEXT with a ``json_valid`` check, which
    SQLAlchemy reflects as text. MySQL's JSON is a type of its own (and its information schema
    has no TABLE_NAME in CHECK_CONSTRAINTS): nothing to find."""
    query = sa.text(
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
        "WHERE CONSTRAINT_SCHEMA = :schema AND TABLE_NAME = :table"
    )
    try:
        with engine.connect() as con:
            clauses = [str(r[0]) for r in con.execute(query, {"schema": schema, "table": table})]
    except sa.exc.DBAPIError:
        return set()
    return {m.group(1).replace("``", "`") for c in clauses if (m := _JSON_VALID.fullmatch(c.strip()))}


def default_schema(url: sa.URL) -> str | None:
    """The schema a table without one is read from: ``public`` on PostgreSQL, the connection's
    database on MySQL/MariaDB; SQLite has one."""
    kind = engine_kind(url)
    if kind == "postgresql":
        return "public"
    if kind == "mysql":
        return url.database
    return None


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


Key = tuple[Any, ...]
"""One row's primary key: a value per key column, in the declared order."""


def key_in(names: Sequence[str], keys: Sequence[Key], q: Callable[[str], str], lit: Callable[[Any], str]) -> str:
    """A predicate true for the rows whose key is one of ``keys``: ``"k" IN (...)`` for one key
    column, an OR of ANDs for a composite key (row-value IN lists are not portable across the
    engines, SQLite and DuckDB's scanners included). ``q`` quotes a name, ``lit`` writes a value."""
    if len(names) == 1:
        return f"{q(names[0])} IN ({', '.join(lit(k[0]) for k in keys)})"
    rows = (" AND ".join(f"{q(n)} = {lit(v)}" for n, v in zip(names, k, strict=True)) for k in keys)
    return "(" + " OR ".join(f"({r})" for r in rows) + ")"


def dquote(name: str) -> str:
    """A name quoted for DuckDB (and the warehouse)."""
    return '"' + name.replace('"', '""') + '"'


def source_relation(kind: str, table: str, schema: str | None = None) -> str:
    """The attached table as DuckDB names it."""
    if kind == "postgresql":
        return f'src."{schema or "public"}"."{table}"'
    if kind == "mysql" and schema:
        return f'src."{schema}"."{table}"'
    return f'src."{table}"'


def source_literal(kind: str, value: Any) -> str:
    """A literal in the source's own SQL (MySQL reads a backslash in a string as an escape, and
    knows no TIMESTAMPTZ)."""
    if kind == "mysql":
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)  # the session's time zone is UTC
        if isinstance(value, str):
            return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return sql_literal(value)


def qualified(kind: str, table: str, schema: str | None) -> str:
    """The table's name in the source's own SQL, with its schema."""
    return f"{quote(kind, schema)}.{quote(kind, table)}" if schema else quote(kind, table)


def read_from(
    kind: str,
    table: str,
    schema: str | None,
    columns: list[SourceColumn],
    where: str = "",
    at_source: bool | None = None,
) -> str:
    """The FROM clause that reads ``columns`` of a source table, filtered by ``where``.

    DuckDB's scanner reads the table (``where`` in DuckDB's SQL, pushed down by the scanner)
    unless a column needs a source-side expression (:attr:`SourceColumn.source_expr`), or
    ``at_source`` asks for it: then the whole read is one query run at the source, with
    ``where`` in the source's SQL inside it."""
    if not (needs_source_sql(kind, columns) if at_source is None else at_source):
        return f"{source_relation(kind, table, schema)}{f' WHERE {where}' if where else ''}"
    items = ", ".join(f"{_at_source(kind, c)} AS {quote(kind, c.name)}" for c in columns)
    query = f"SELECT {items} FROM {qualified(kind, table, schema)}{f' WHERE {where}' if where else ''}"
    function = "postgres_query" if kind == "postgresql" else "mysql_query"
    return f"{function}('src', {_quote(query)})"


def _at_source(kind: str, column: SourceColumn) -> str:
    if column.source_expr:
        return column.source_expr
    col = quote(kind, column.name)
    if kind == "mysql" and column.raw_type.startswith("DECIMAL"):
        # mysql_query types a decimal(38,0) result as DECIMAL(37,0), and fails on 38 nines: its text is exact
        return f"CAST({col} AS CHAR)"
    if kind == "mysql" and column.raw_type in ("VARCHAR", "JSON"):
        return f"CONVERT({col} USING utf8mb4)"  # mysql_query reads a binary collation's text as bytes
    return col


def needs_source_sql(kind: str, columns: list[SourceColumn]) -> bool:
    """True when :func:`read_from` runs the read as a query at the source (its ``where`` is then
    in the source's SQL)."""
    return kind != "sqlite" and any(c.source_expr for c in columns)
