"""The PostgreSQL warehouse: a shared server (``DUSK_TARGET=postgres``).

dlt loads raw through PostgreSQL's binary COPY (ADBC, from the same parquet files the DuckDB
warehouse imports; never row inserts), dbt builds with dbt-postgres, and the runner's own reads
and writes (the ledger, the salt, monitoring, publishing) go through one psycopg connection in
autocommit mode, wrapped so that its SQL is the same as on DuckDB (``?`` parameters).

The database is created on first use when the user may create databases; readers in other
processes simply connect (PostgreSQL has no single-writer rule).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from dusk.settings import PostgresSettings
from dusk.warehouse import LedgerError, Reading, Warehouse


def placeholders(query: str) -> str:
    """``?`` parameters as psycopg's ``%s`` (and a literal ``%`` doubled), outside quoted strings
    and names: the runner's SQL is written once, with DuckDB's ``?``."""
    out = []
    quote: str | None = None
    for char in query:
        if quote:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        if char == "%":
            out.append("%%")
            continue
        out.append(char)
    return "".join(out)


class PgConnection:
    """A psycopg connection with DuckDB's calling convention (``execute`` returns a cursor)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, query: str, parameters: Sequence[Any] | None = None, /) -> psycopg.Cursor[Any]:
        if parameters is None:
            return self.raw.execute(query.encode())  # bytes: sent as is, no placeholders
        return self.raw.execute(placeholders(query).encode(), list(parameters))

    def executemany(self, query: str, parameters: Sequence[Sequence[Any]], /) -> None:
        with self.raw.cursor() as cur:
            cur.executemany(placeholders(query).encode(), [list(p) for p in parameters])

    def close(self) -> None:
        self.raw.close()


def connect(pg: PostgresSettings, create: bool = False) -> PgConnection:
    """A connection to the warehouse database; ``create``: create the database when it does not
    exist yet (the error names the database and the fix when that is not allowed)."""
    try:
        return PgConnection(psycopg.connect(pg.url(), autocommit=True, connect_timeout=15))
    except psycopg.OperationalError as exc:
        if not create or "does not exist" not in str(exc):
            raise
    with psycopg.connect(pg.url("postgres"), autocommit=True, connect_timeout=15) as admin:
        try:
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(pg.database)))
        except psycopg.errors.DuplicateDatabase:
            pass  # created meanwhile
        except psycopg.Error as exc:
            raise RuntimeError(
                f"the warehouse database {pg.database!r} does not exist on {pg.host}:{pg.port} and user {pg.user!r} "
                f"cannot create it ({exc}). Create it (createdb {pg.database}) or set DUSK_PG_DATABASE."
            ) from exc
    return PgConnection(psycopg.connect(pg.url(), autocommit=True, connect_timeout=15))


class PostgresWarehouse(Warehouse):
    """A PostgreSQL database (``DUSK_PG_HOST``, ``_PORT``, ``_USER``, ``_DATABASE``, ``_PASSWORD``)."""

    engine = "postgres"
    loader_file_format = "parquet"
    """Parquet files are loaded by binary COPY through ADBC (dlt's default here would be inserts)."""

    @property
    def pg(self) -> PostgresSettings:
        return self.settings.postgres

    def exists(self) -> bool:
        try:
            connect(self.pg).close()
        except psycopg.OperationalError:
            return False
        return True

    @contextmanager
    def connect(self) -> Iterator[PgConnection]:
        con = connect(self.pg, create=True)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def read(self) -> Iterator[tuple[PgConnection, Reading]]:
        try:
            con = connect(self.pg)
        except psycopg.OperationalError as exc:
            raise LedgerError(f"no run ledger to read: {self.describe()}: {exc}") from exc
        try:
            yield con, Reading(self.describe(), "warehouse")
        finally:
            con.close()

    def destination(self) -> Any:
        """dlt's postgres destination (credentials as an object: dlt's URL form insists on a
        password, which a trusted or .pgpass login does not have)."""
        import dlt
        from dlt.destinations.impl.postgres.configuration import PostgresCredentials

        pg = self.pg
        credentials = PostgresCredentials()
        credentials.host, credentials.port, credentials.username = pg.host, pg.port, pg.user
        credentials.database, credentials.password = pg.database, pg.password or ""
        return dlt.destinations.postgres(credentials=credentials)
