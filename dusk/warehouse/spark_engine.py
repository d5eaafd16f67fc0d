"""The Spark warehouse: Spark 3.5 with Apache Iceberg tables (``DUSK_TARGET=spark``).

dlt writes raw as Iceberg tables (destination ``filesystem``, ``table_format: iceberg``) into the
Iceberg catalog Spark also uses (:mod:`dusk.spark`); dbt builds with dbt-spark; the runner's own
SQL (the ledger, the salt, monitoring, publishing) goes to Spark through :class:`SparkConnection`:

- embedded (the default): an in-process ``local[2]`` session, which dbt-spark's ``session`` method
  shares (``getOrCreate`` returns it), so a night starts one JVM;
- a cluster: ``DUSK_SPARK_MASTER=spark://host:port`` (the session's executors run there), or
  ``DUSK_SPARK_THRIFT=host:port`` (dbt and the runner send SQL to a Spark Thrift server).

The runner's SQL is written once, in DuckDB's dialect with ``?`` parameters; here sqlglot
translates it to Spark's and the parameters become literals. Spark has no transactions: every
statement is one Iceberg commit, atomic on its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import sqlglot
from sqlglot import exp

from dusk.settings import Settings
from dusk.spark import catalog_config, prepare_catalog, session_conf
from dusk.warehouse import LedgerError, Reading, Warehouse

log = logging.getLogger(__name__)

NO_TRANSACTIONS = {"begin", "commit", "rollback"}
THRIFT_TYPES: dict[str, Any] = {
    "DATE_TYPE": date.fromisoformat,
    "TIMESTAMP_TYPE": datetime.fromisoformat,
    "DECIMAL_TYPE": Decimal,
}
"""Spark Thrift server column types that may reach PyHive as text, and how to read them."""


@lru_cache(maxsize=512)
def translate(query: str) -> tuple[exp.Expr, ...]:
    """DuckDB-dialect SQL as Spark statements (constraints Iceberg lacks are left out)."""
    statements = []
    for statement in sqlglot.parse(query, read="duckdb"):
        if statement is None:
            continue
        if isinstance(statement, exp.Command) and statement.name.lower() not in ("show", "describe"):
            # sqlglot could not parse it and would pass the DuckDB text on unchanged
            raise ValueError(f"cannot translate this SQL to Spark's dialect: {query[:200]}")
        for constraint in list(statement.find_all(exp.PrimaryKeyColumnConstraint)):
            constraint.parent.pop() if isinstance(constraint.parent, exp.ColumnConstraint) else constraint.pop()
        statements.append(statement)
    return tuple(statements)


def bind(statement: exp.Expr, parameters: Sequence[Any] | None) -> str:
    """Spark SQL of ``statement`` with its ``?`` parameters as literals, in the order they appear
    in the text (outside quoted strings and names)."""
    query = statement.sql("spark")
    if not parameters:
        return query
    values = iter(parameters)
    out, quote = [], None
    for char in query:
        if quote:
            quote = None if char == quote else quote
        elif char in ("'", '"', "`"):
            quote = char
        elif char == "?":
            out.append(exp.convert(next(values)).sql("spark"))
            continue
        out.append(char)
    return "".join(out)


class Rows:
    """What a statement returned, with DuckDB's cursor methods."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None


class SparkConnection:
    """The runner's connection: a Spark session in this process (started on first use), or a
    Thrift server's cursor."""

    def __init__(self, settings: Settings | None = None, cursor: Any = None) -> None:
        self.settings, self.cursor = settings, cursor
        self._session: Any = None

    @property
    def session(self) -> Any:
        if self._session is None and self.settings is not None:
            self._session = spark_session(self.settings)
        return self._session

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """Run one Spark SQL statement as is; its rows."""
        log.debug("spark sql: %s", query)
        if self.cursor is None:
            return [tuple(row) for row in self.session.sql(query).collect()]
        self.cursor.execute(query)
        try:
            rows = self.cursor.fetchall()
        except Exception:  # PyHive raises on a statement that returns no result set
            return []
        # the Thrift protocol sends dates, times and decimals as text
        parse = [THRIFT_TYPES.get(str(d[1])) for d in self.cursor.description or []]
        return [tuple(f(v) if f and isinstance(v, str) else v for f, v in zip(parse, r, strict=False)) for r in rows]

    def execute(self, query: str, parameters: Sequence[Any] | None = None, /) -> Rows:
        rows: list[tuple[Any, ...]] = []
        if query.strip().rstrip(";").lower() in NO_TRANSACTIONS:
            return Rows(rows)
        for statement in translate(query):
            runnable = self._unless_column_exists(statement)
            if runnable is not None:
                rows = self.sql(bind(runnable, parameters))
        return Rows(rows)

    def _unless_column_exists(self, statement: exp.Expr) -> exp.Expr | None:
        """``alter table ... add column if not exists`` (Spark lacks the clause): None when the
        column is there, else the plain ``add column``; any other statement as it is."""
        actions = statement.args.get("actions") if isinstance(statement, exp.Alter) else None
        if not actions or not isinstance(actions[0], exp.ColumnDef) or not actions[0].args.get("exists"):
            return statement
        columns = {str(row[0]).lower() for row in self.sql(f"describe table {statement.this.sql('spark')}")}
        if actions[0].name.lower() in columns:
            return None
        plain = statement.copy()
        plain.args["actions"][0].set("exists", False)
        return plain

    def executemany(self, query: str, parameters: Sequence[Sequence[Any]], /) -> None:
        """An INSERT ... VALUES of many rows as one statement (one Iceberg commit, not one per row)."""
        if not parameters:
            return
        (statement,) = translate(query)
        values = statement.find(exp.Values)
        if not isinstance(statement, exp.Insert) or values is None:
            for row in parameters:
                self.execute(query, row)
            return
        template = values.expressions[0]
        many = statement.copy()
        many.find(exp.Values).set("expressions", [template] * len(parameters))  # type: ignore[union-attr]
        self.sql(bind(many, [value for row in parameters for value in row]))

    def tables(self, schema: str) -> list[str]:
        """The tables and views of a namespace (Spark has no information_schema)."""
        if not self.sql(f"show namespaces like '{schema}'"):
            return []
        # a v2 catalog's SHOW TABLES leaves views out; both list the session's temporary views
        found = self.sql(f"show tables in `{schema}`") + self.sql(f"show views in `{schema}`")
        return sorted({str(name) for _, name, temporary in found if not temporary})

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()


_session_lock = threading.Lock()


def spark_session(settings: Settings) -> Any:
    """This process's Spark session with the warehouse's configuration (a session made for another
    catalog is stopped first: a catalog's settings are read once, when it is first used)."""
    from pyspark.sql import SparkSession

    conf = session_conf(settings)
    with _session_lock:
        active = SparkSession.getActiveSession()
        if active is not None:
            current = dict(active.sparkContext.getConf().getAll())
            if all(current.get(k) == v for k, v in conf.items() if k.startswith("spark.sql.catalog.")):
                return active
            active.stop()
        if settings.iceberg_catalog.startswith("sqlite"):  # Spark's catalog does not make its tables there
            prepare_catalog(settings)
        builder = SparkSession.builder
        for key, value in conf.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        return session


class SparkWarehouse(Warehouse):
    """Iceberg tables in the catalog ``DUSK_ICEBERG_CATALOG_URI``, built and read by Spark."""

    engine = "spark"
    loader_file_format = "parquet"
    table_format = "iceberg"
    merge_strategy = "upsert"
    """dlt refuses its default ``delete-insert`` on Iceberg; ``upsert`` merges on the primary key."""
    file_column = "_source_file"
    """Iceberg reserves ``_file`` (a metadata column: Spark refuses tables and views with it)."""

    def exists(self) -> bool:
        from sqlalchemy import create_engine, inspect

        engine = create_engine(catalog_config(self.settings)["uri"])
        try:
            return "iceberg_tables" in inspect(engine).get_table_names()
        except Exception:
            return False
        finally:
            engine.dispose()

    def _open(self) -> SparkConnection:
        thrift = self.settings.spark.thrift
        if thrift:
            from pyhive import hive

            host, _, port = thrift.rpartition(":")
            return SparkConnection(cursor=hive.connect(host=host or "127.0.0.1", port=int(port or 10000)).cursor())
        return SparkConnection(self.settings)

    @contextmanager
    def connect(self) -> Iterator[SparkConnection]:
        con = self._open()
        try:
            con.sql("create namespace if not exists default")  # dbt-spark's thrift method runs `use default`
            yield con
        finally:
            con.close()

    @contextmanager
    def read(self) -> Iterator[tuple[SparkConnection, Reading]]:
        if not self.exists():
            raise LedgerError(f"no run ledger to read: no Iceberg catalog yet at {self.describe()} (make run)")
        con = self._open()
        try:
            yield con, Reading(self.describe(), "warehouse")
        finally:
            con.close()

    def destination(self) -> Any:
        """dlt's filesystem destination on the lake, with Iceberg tables in the shared catalog (the
        catalog's settings reach dlt through ``ICEBERG_CATALOG__*``, set by the runtime environment)."""
        import dlt

        return dlt.destinations.filesystem(bucket_url=self.settings.iceberg_lake)
