"""The warehouse: the one place that opens it, and what dusk keeps in it besides the data.

The warehouse is a choice (``DUSK_TARGET``): DuckDB, one embedded file (:mod:`.duckdb_engine`,
the default), a PostgreSQL database (:mod:`.postgres_engine`), or Spark with Iceberg tables
(:mod:`.spark_engine`). :func:`open_warehouse` gives the
configured one; everything else in the runner talks to it through :class:`Warehouse` and a
:class:`Connection` (``execute`` with ``?`` parameters, ``executemany``), whatever the engine.

Besides the data it holds the run ledger's tables (:data:`LEDGER_DDL`, schema ``dusk_ledger``) and
the PII salt (schema ``dusk_private``, never published).
"""

from __future__ import annotations

import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb

from dusk.settings import PROJECT_DIR, Settings


class Cursor(Protocol):
    """What a query returns."""

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class Connection(Protocol):
    """A connection to the warehouse: ``?`` marks a parameter on every engine."""

    def execute(self, sql: str, parameters: Sequence[Any] | None = None, /) -> Any: ...

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> Any: ...


def table_names(con: Connection, schema: str) -> list[str]:
    """The tables and views of ``schema`` in the warehouse (none when it does not exist)."""
    tables = getattr(con, "tables", None)  # an engine without information_schema (Spark) lists them itself
    if callable(tables):
        return list(tables(schema))
    rows = con.execute(
        "select table_name from information_schema.tables "
        "where table_catalog = current_database() and table_schema = ? order by 1",
        [schema],
    ).fetchall()
    return [str(name) for (name,) in rows]


def insert_rows(con: Connection, table: str, rows: Sequence[Sequence[Any]], columns: str = "") -> None:
    """INSERT ``rows`` into ``table`` (qualified; ``columns``: a parenthesised column list, or
    every column in order). On DuckDB as one Arrow table: DuckDB binds a prepared statement's
    parameters slowly (measured: ~50 us each; a quiet night's 170 dbt-node rows of 11 columns
    took 0.19-0.44 s with ``executemany``, 0.01-0.06 s as Arrow, and the ledger's writes were a
    tenth of a quiet night). Elsewhere, and for values Arrow cannot type as one column (say, a
    number and a text), the engine's ``executemany`` (psycopg pipelines it, Spark makes it one
    statement)."""
    if not rows:
        return
    if isinstance(con, duckdb.DuckDBPyConnection):
        import pyarrow as pa

        try:
            batch = pa.table({f"c{i}": pa.array(values) for i, values in enumerate(zip(*rows, strict=True))})
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
        else:
            name = f"_dusk_rows_{secrets.token_hex(4)}"
            con.register(name, batch)
            try:
                con.execute(f"insert into {table} {columns} select * from {name}")
            finally:
                con.unregister(name)
            return
    marks = ", ".join("?" for _ in rows[0])
    con.executemany(f"insert into {table} {columns} values ({marks})", [list(r) for r in rows])


def column_types(con: Connection, schema: str, table: str, catalog: str | None = None) -> dict[str, str]:
    """The columns of ``schema.table`` and their types, lower-case, in order (``catalog``: an
    attached DuckDB database; default the warehouse); empty when it does not exist."""
    if callable(getattr(con, "tables", None)):  # Spark: no information_schema
        try:
            rows = con.sql(f"describe table `{schema}`.`{table}`")  # type: ignore[attr-defined]
        except Exception:
            return {}
        found: dict[str, str] = {}
        for name, kind, *_ in rows:
            if not name or str(name).startswith("#"):  # the partitioning section follows a blank row
                break
            found[str(name)] = str(kind).lower()
        return found
    where = "table_catalog = ?" if catalog else "table_catalog = current_database()"
    rows = con.execute(
        f"select column_name, data_type from information_schema.columns where {where} "
        "and table_schema = ? and table_name = ? order by ordinal_position",
        [*([catalog] if catalog else []), schema, table],
    ).fetchall()
    return {str(name): str(kind).lower() for name, kind in rows}


class LedgerError(RuntimeError):
    """No ledger to read (no run yet, or the warehouse cannot be opened)."""


@dataclass(frozen=True)
class Reading:
    """Where a reader in another process found the ledger."""

    where: str
    note: str
    is_warehouse: bool = True


class Warehouse(ABC):
    """The warehouse of one installation, on its engine."""

    engine: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> str:
        """Where the warehouse is, for messages (never with a password)."""
        return self.settings.warehouse_label

    @abstractmethod
    def exists(self) -> bool:
        """Whether the warehouse was created (a run has started once)."""

    @abstractmethod
    def connect(self) -> AbstractContextManager[Any]:
        """The night's connection (a :class:`Connection`): it holds one for all its own reads and
        writes."""

    @abstractmethod
    def read(self) -> AbstractContextManager[tuple[Any, Reading]]:
        """A connection for a reader in another process (``dusk status``, the report), and where
        it reads."""

    @abstractmethod
    def destination(self) -> Any:
        """dlt's destination for this warehouse."""

    def after_ingest(self, con: Any) -> None:
        """Once the sources are loaded, before dbt and the steps that read what it builds:
        settings for that part of the night (none, but on DuckDB)."""
        del con

    loader_file_format: str | None = None
    """The file format dlt loads with (None: the destination's own choice)."""
    table_format: str | None = None
    """The table format dlt writes raw in (None: the destination's own tables)."""
    merge_strategy: str | None = None
    """dlt's merge strategy for ``merge`` tables (None: dlt's default, ``delete-insert``)."""
    file_column: str = "_file"
    """The raw column holding a files source's file name (the dbt macro ``file_column()`` agrees)."""

    def target(self) -> Any:
        """Where ingestion lands each source (:class:`ingestion.run.Target`)."""
        from ingestion.run import Target

        s = self.settings
        return Target(
            self.destination(),
            work_dir=s.pipelines_dir,
            landing_dir=s.landing_dir,
            base_dir=PROJECT_DIR,
            loader_file_format=self.loader_file_format,
            table_format=self.table_format,
            merge_strategy=self.merge_strategy,
            file_column=self.file_column,
        )


def open_warehouse(settings: Settings) -> Warehouse:
    """The configured warehouse (``settings.target``)."""
    if settings.target == "postgres":
        from dusk.warehouse.postgres_engine import PostgresWarehouse

        return PostgresWarehouse(settings)
    if settings.target == "spark":
        from dusk.warehouse.spark_engine import SparkWarehouse

        return SparkWarehouse(settings)
    from dusk.warehouse.duckdb_engine import DuckDBWarehouse

    return DuckDBWarehouse(settings)


LEDGER = "dusk_ledger"
LEDGER_DDL = f"""
create schema if not exists {LEDGER};
create table if not exists {LEDGER}.runs (
    run_id varchar primary key, status varchar not null, started_at timestamp not null,
    seconds double precision not null, failed_sources varchar, error varchar
);
alter table {LEDGER}.runs add column if not exists mode varchar;
create table if not exists {LEDGER}.steps (
    run_id varchar not null, step varchar not null, target varchar, status varchar not null,
    attempts integer, seconds double precision not null
);
alter table {LEDGER}.steps add column if not exists sql_seconds double precision;
create table if not exists {LEDGER}.source_tables (
    run_id varchar not null, source varchar not null, table_name varchar not null,
    extracted bigint not null, deleted bigint not null, quarantined bigint not null, loaded bigint not null
);
create table if not exists {LEDGER}.dbt_nodes (
    run_id varchar not null, unique_id varchar not null, name varchar not null, resource_type varchar not null,
    layer varchar, status varchar not null, seconds double precision not null, rows_affected bigint, failures bigint,
    failures_table varchar, message varchar
);
create table if not exists {LEDGER}.quarantine (
    run_id varchar not null, source varchar not null, table_name varchar not null, reason varchar not null,
    row_count bigint not null
);
create table if not exists {LEDGER}.freshness (
    run_id varchar not null, source varchar not null, table_name varchar not null, status varchar not null
);
create table if not exists {LEDGER}.schema_changes (
    run_id varchar not null, source varchar not null, change varchar not null
);
create table if not exists {LEDGER}.erasures (
    erase_id varchar not null, erased_at timestamp not null, source varchar not null, table_name varchar not null,
    key_hash varchar not null, scope varchar not null
);
create table if not exists {LEDGER}.data_diff (
    run_id varchar not null, relation varchar not null, status varchar not null, key_columns varchar,
    rows_before bigint, rows_after bigint, added bigint, removed bigint, changed bigint,
    changed_columns varchar, max_changed_share double precision, severity varchar, error varchar
);
alter table {LEDGER}.data_diff add column if not exists changed_schema varchar;
create table if not exists {LEDGER}.findings (
    run_id varchar not null, check_name varchar not null, severity varchar not null, target varchar not null,
    message varchar not null, value double precision, limit_value double precision
);
"""
"""The run ledger's tables (dbt declares them as the source ``ledger``, models/ledger/)."""

ABOUT = "dusk_published"
"""The readers' copy's own schema: which run it holds (table ``about``: run_id, published_at)."""

PRIVATE = "dusk_private"
SALT_TABLE = f"{PRIVATE}.pii_salt"
NEVER_PUBLISHED = (PRIVATE,)
"""Schemas that must never reach readers (besides every ``raw_*`` schema)."""


class PublishError(RuntimeError):
    """Tonight could not be published; readers keep what they had."""


def check_schemas(schemas: tuple[str, ...]) -> tuple[str, ...]:
    """The schemas to publish, refusing the ones that hold secrets or unhashed PII."""
    for schema in schemas:
        if schema in NEVER_PUBLISHED or schema.startswith("raw_"):
            raise PublishError(
                f"DUSK_PUBLISH_SCHEMAS names {schema!r}: raw schemas (unhashed PII) and dusk_private "
                "(the PII salt) are never published"
            )
    return schemas


class SaltError(RuntimeError):
    """The salt is missing, unusable or differs from the warehouse's."""


def ensure_ledger(con: Connection) -> None:
    """Create the ledger's schema and tables if missing (before dbt, which tests them as a source)."""
    con.execute(LEDGER_DDL)


def salt_file(settings: Settings) -> Path:
    """Where the runner keeps a generated salt when DUSK_PII_SALT is not set (git-ignored)."""
    return settings.secrets_dir / "pii_salt"


def read_salt(settings: Settings) -> str:
    """The configured salt: DUSK_PII_SALT, else the secret file (created with 256 random bits).

    dbt's ``pii()`` macro hashes columns tagged ``pii`` with ``sha256(salt || value)`` and reads the
    salt from the warehouse table ``dusk_private.pii_salt``, so the salt never appears in compiled
    SQL, dbt's logs or ``target/``."""
    value = settings.pii_salt
    if value is None:
        path = salt_file(settings)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        value = path.read_text().strip()
    if len(value) < 16:
        raise SaltError(f"the PII salt (DUSK_PII_SALT or {salt_file(settings)}) must have at least 16 characters")
    return value


def ensure_salt(con: Connection, salt: str) -> bool:
    """Store the salt in the warehouse; True when it was stored now. A different salt would
    silently re-hash every value (and version every customer in the snapshot), so a warehouse
    built with one salt refuses another."""
    con.execute(f"create schema if not exists {PRIVATE}")
    con.execute(f"create table if not exists {SALT_TABLE} (salt varchar not null)")
    stored = [r[0] for r in con.execute(f"select salt from {SALT_TABLE}").fetchall()]
    if stored == [salt]:
        return False
    if stored:
        raise SaltError(
            f"the PII salt differs from the one this warehouse was built with ({SALT_TABLE}); hashes would "
            "change for every row. Restore DUSK_PII_SALT (or the secret file data/secrets/pii_salt), or start a "
            "new warehouse to rotate it."
        )
    con.execute(f"insert into {SALT_TABLE} values (?)", [salt])
    return True
