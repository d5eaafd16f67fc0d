"""`dusk migrate --to postgres`: move an installation's DuckDB warehouse to PostgreSQL, keeping what
cannot be rebuilt from the sources.

What moves, table by table, in one transaction on the new engine:

- every declared source's raw dataset (``raw_<source>``), with dlt's own tables in it: the
  pipeline state (incremental cursors, CDC slot positions), the load history and the stored
  schemas, so the next night goes on where the last one stopped; a files source's ledger of
  loaded files is a raw table too;
- ``snapshots`` (the SCD2 history: it cannot be rebuilt from sources that keep no history);
- the run ledger (``dusk_ledger``) and the PII salt (``dusk_private``), so hashes stay the same.

Models (staging, intermediate, marts, seeds) are not moved: the next night on the new engine
builds them from raw, and an incremental model equals its rebuild (invariant 2). A stream's
acknowledgements live in the stream server, and dlt's working folder stays where it is.

Exact or loud: a column type the copy could not hold exactly stops the move naming it, and every
copied table is compared with its original, row for row, before the transaction commits.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace

import duckdb
from psycopg.conninfo import make_conninfo

from dusk.settings import Settings
from dusk.warehouse import LEDGER, PRIVATE, open_warehouse
from ingestion.declaration import load_sources
from ingestion.extensions import load_extension

log = logging.getLogger(__name__)

ENGINES = ("postgres",)
"""Engines a DuckDB warehouse can move to."""
KEPT = ("snapshots", LEDGER, PRIVATE)
"""The schemas besides raw that hold what cannot be rebuilt."""
EXACT = re.compile(
    r"(BOOLEAN|TINYINT|SMALLINT|INTEGER|BIGINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|FLOAT|DOUBLE|VARCHAR|JSON|BLOB|"
    r"DATE|TIME|TIMESTAMP|TIMESTAMP WITH TIME ZONE|UUID|INTERVAL|DECIMAL\(\d+,\d+\))"
)
"""DuckDB column types PostgreSQL holds exactly through DuckDB's postgres extension (HUGEINT, for
one, would become a double: it is refused)."""


class MigrateError(RuntimeError):
    """The warehouse was not moved; the message says why and what to do."""


@dataclass
class Moved:
    """What a migration moved."""

    where: str
    left: str
    tables: dict[str, int] = field(default_factory=dict)
    """Rows per ``schema.table``."""
    seconds: float = 0.0


def migrate(settings: Settings, to: str) -> Moved:
    """Copy the DuckDB warehouse's raw datasets, snapshots, ledger and salt into the (empty)
    warehouse of engine ``to``; raise MigrateError, leaving both as they were, when it cannot."""
    started = time.monotonic()
    if to not in ENGINES:
        raise MigrateError(f"dusk migrate moves a DuckDB warehouse to {', '.join(ENGINES)}, not {to!r}")
    if settings.target != "duckdb":
        raise MigrateError(
            f"dusk migrate moves the DuckDB warehouse (DUSK_TARGET=duckdb); this installation's is {settings.target}"
        )
    source = settings.warehouse
    if not source.exists():
        raise MigrateError(f"no DuckDB warehouse at {source} to move (DUSK_WAREHOUSE)")
    schemas = sorted({spec.dataset for spec in load_sources(settings.sources_file).values()} | set(KEPT))
    target = open_warehouse(replace(settings, target=to))
    moved = Moved(where=target.describe(), left=str(source))
    with target.connect():
        pass  # created on first use
    with duckdb.connect() as con:
        con.execute("attach '" + str(source).replace("'", "''") + "' as wh (read_only)")
        con.execute("use wh")
        load_extension(con, "duckdb_extension_postgres_scanner")
        tables = _tables(con, schemas)
        pg = settings.postgres
        dsn = make_conninfo(host=pg.host, port=pg.port, user=pg.user, dbname=pg.database, password=pg.password)
        con.execute("attach '" + dsn.replace("'", "''") + "' as dest (type postgres)")
        try:
            taken = con.execute(
                "select table_schema || '.' || table_name from information_schema.tables "
                f"where table_catalog = 'dest' and table_schema in ({', '.join('?' for _ in schemas)}) order by 1",
                schemas,
            ).fetchall()
            if taken:
                raise MigrateError(
                    f"{moved.where} already holds {', '.join(t for (t,) in taken[:5])}"
                    f"{' and more' if len(taken) > 5 else ''}: migrate into an empty database (DUSK_PG_DATABASE)"
                )
            con.execute("begin")
            try:
                for schema in sorted({s for s, _ in tables}):
                    con.execute(f'create schema dest."{schema}"')
                for schema, table in tables:
                    moved.tables[f"{schema}.{table}"] = _copy(con, schema, table)
            except BaseException:
                con.execute("rollback")
                raise
            con.execute("commit")
        finally:
            con.execute("detach dest")
    moved.seconds = time.monotonic() - started
    log.info("migrated %d tables to %s in %.1fs", len(moved.tables), moved.where, moved.seconds)
    return moved


def _tables(con: duckdb.DuckDBPyConnection, schemas: list[str]) -> list[tuple[str, str]]:
    """The tables to move, after checking that every column's type moves exactly."""
    marks = ", ".join("?" for _ in schemas)
    columns = con.execute(
        "select table_schema, table_name, column_name, data_type from information_schema.columns "
        "join information_schema.tables using (table_catalog, table_schema, table_name) "
        f"where table_catalog = 'wh' and table_type = 'BASE TABLE' and table_schema in ({marks}) "
        "order by 1, 2",
        schemas,
    ).fetchall()
    inexact = [f"{s}.{t}.{c} ({kind})" for s, t, c, kind in columns if not EXACT.fullmatch(kind)]
    if inexact:
        raise MigrateError(
            f"these columns have types the other engine would not hold exactly: {', '.join(inexact)}. Nothing was "
            "moved. Fix: declare such source columns as text or decimal (columns: in sources.yml) and reload them."
        )
    return sorted({(s, t) for s, t, _, _ in columns})


def _copy(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> int:
    """Copy one table and compare the copy with it both ways; its row count."""
    name = f'"{schema}"."{table}"'
    original = f"wh.{name}"
    con.execute(f"create table dest.{name} as select * from {original}")
    for left, right in ((original, f"dest.{name}"), (f"dest.{name}", original)):
        (differ,) = con.execute(  # type: ignore[misc]
            f"select count(*) from (select * from {left} except all select * from {right})"
        ).fetchone()
        if differ:
            raise MigrateError(f"{schema}.{table}: {differ} row(s) differ after the copy; nothing was moved")
    (rows,) = con.execute(f"select count(*) from {original}").fetchone()  # type: ignore[misc]
    return int(rows)
