"""The run ledger: every run's steps, rows, dbt nodes, quarantine and freshness, kept in the
warehouse (schema ``dusk_ledger``) across runs, for monitoring and the report. dbt declares it as
the source ``ledger`` (models/ledger/_ledger__sources.yml), so it is documented and queryable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from dusk.settings import Settings

if TYPE_CHECKING:
    from dusk.pipeline import RunResult

SCHEMA = "dusk_ledger"
DDL = f"""
create schema if not exists {SCHEMA};
create table if not exists {SCHEMA}.runs (
    run_id varchar primary key, status varchar not null, started_at timestamp not null,
    seconds double not null, failed_sources varchar, error varchar
);
alter table {SCHEMA}.runs add column if not exists mode varchar;
create table if not exists {SCHEMA}.steps (
    run_id varchar not null, step varchar not null, target varchar, status varchar not null,
    attempts integer, seconds double not null
);
create table if not exists {SCHEMA}.source_tables (
    run_id varchar not null, source varchar not null, table_name varchar not null,
    extracted bigint not null, deleted bigint not null, quarantined bigint not null, loaded bigint not null
);
create table if not exists {SCHEMA}.dbt_nodes (
    run_id varchar not null, unique_id varchar not null, name varchar not null, resource_type varchar not null,
    layer varchar, status varchar not null, seconds double not null, rows_affected bigint, failures bigint,
    failures_table varchar, message varchar
);
create table if not exists {SCHEMA}.quarantine (
    run_id varchar not null, source varchar not null, table_name varchar not null, reason varchar not null,
    row_count bigint not null
);
create table if not exists {SCHEMA}.freshness (
    run_id varchar not null, source varchar not null, table_name varchar not null, status varchar not null
);
create table if not exists {SCHEMA}.schema_changes (
    run_id varchar not null, source varchar not null, change varchar not null
);
create table if not exists {SCHEMA}.findings (
    run_id varchar not null, check_name varchar not null, severity varchar not null, target varchar not null,
    message varchar not null, value double, limit_value double
);
"""


class LedgerError(RuntimeError):
    """No ledger to read (no run yet, or no file can be opened)."""


@dataclass
class LedgerSource:
    """Where the report read the ledger from."""

    path: Path
    note: str


@contextmanager
def open_ledger(settings: Settings, read_only: bool = True) -> Iterator[tuple[duckdb.DuckDBPyConnection, LedgerSource]]:
    """A connection to the ledger: the warehouse, or the served file when a run holds the
    warehouse (DuckDB lets no other process read a file while one writes it). The run itself
    passes ``read_only=False``: DuckDB refuses a second in-process connection to a file with a
    different configuration than dbt's, which stays open."""
    candidates = [(settings.warehouse, "warehouse"), (settings.served_path, "served file (last published night)")]
    errors = []
    for path, what in candidates:
        if not path.exists():
            continue
        try:
            con = duckdb.connect(str(path), read_only=read_only or path != settings.warehouse)
        except duckdb.IOException as exc:
            errors.append(f"{path}: {exc}")
            continue
        try:
            yield con, LedgerSource(path, what)
        finally:
            con.close()
        return
    raise LedgerError("no run ledger to read: " + ("; ".join(errors) or "no run yet (make run)"))


def ensure_ledger(con: duckdb.DuckDBPyConnection) -> None:
    """Create the ledger's schema and tables if missing (before dbt, which tests them as a source)."""
    con.execute(DDL)


def run_id(result: RunResult) -> str:
    """The run's id: its start time (UTC), as in data/runs/<run id>.json."""
    return f"{result.started_at:%Y%m%dT%H%M%S%fZ}"


def _quarantine_counts(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str, int]]:
    views = con.execute(
        "select table_name from information_schema.tables "
        "where table_schema = 'staging' and table_name like 'quarantine\\_%' escape '\\'"
    ).fetchall()
    rows: list[tuple[str, str, str, int]] = []
    for (view,) in views:
        source = view.removeprefix("quarantine_")
        rows += [
            (source, str(t), str(r), int(n))
            for t, r, n in con.execute(
                f'select table_name, quarantine_reason, count(*) from staging."{view}" group by 1, 2 order by 1, 2'
            ).fetchall()
        ]
    return rows


def write_ledger(result: RunResult) -> None:
    """Append this run to the ledger (in one transaction: a run is in the ledger whole or not)."""
    rid = run_id(result)
    with duckdb.connect(str(result.settings.warehouse)) as con:
        ensure_ledger(con)
        con.execute("begin")
        tables_of_run = ("runs", "steps", "source_tables", "dbt_nodes", "quarantine", "freshness", "findings")
        for table in (*tables_of_run, "schema_changes"):
            con.execute(f"delete from {SCHEMA}.{table} where run_id = ?", [rid])
        con.execute(
            f"insert into {SCHEMA}.runs (run_id, status, started_at, seconds, failed_sources, error, mode) "
            "values (?, ?, ?, ?, ?, ?, ?)",
            [
                rid,
                result.status,
                result.started_at.replace(tzinfo=None),
                result.seconds,
                ", ".join(result.failed_sources) or None,
                result.error,
                result.mode,
            ],
        )
        steps: list[list[Any]] = []
        tables: list[list[Any]] = []
        changes: list[list[Any]] = []
        for s in result.sources:
            status = "skipped" if s.skipped else "ok" if s.ok else "failed"
            steps.append([rid, "ingest", s.source, status, s.attempts, s.seconds])
            tables += [[rid, s.source, t.table, t.extracted, t.deleted, t.quarantined, t.loaded] for t in s.tables]
            changes += [[rid, s.source, c] for c in s.schema_changes]
        dbt = result.dbt
        if dbt is not None:
            steps.append([rid, "dbt", "build, freshness, docs", "ok" if dbt.ok else "failed", 1, dbt.seconds])
            nodes = [
                [
                    rid,
                    n.unique_id,
                    n.name,
                    n.resource_type,
                    n.layer,
                    n.status,
                    n.seconds,
                    n.rows_affected,
                    n.failures,
                    n.failures_table,
                    n.message,
                ]
                for n in dbt.nodes
            ]
            if nodes:
                con.executemany(f"insert into {SCHEMA}.dbt_nodes values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", nodes)
            fresh = [[rid, *_source_table(f.unique_id), f.status] for f in dbt.freshness]
            if fresh:
                con.executemany(f"insert into {SCHEMA}.freshness values (?, ?, ?, ?)", fresh)
            counts = [[rid, *row] for row in _quarantine_counts(con)]
            if counts:
                con.executemany(f"insert into {SCHEMA}.quarantine values (?, ?, ?, ?, ?)", counts)
        if result.published is not None:
            steps.append([rid, "publish", str(result.published.path), "ok", 1, result.published.seconds])
        elif result.publish_error is not None:
            steps.append([rid, "publish", None, "not published", None, 0.0])
        elif result.publishable:
            steps.append([rid, "publish", None, "pending", None, 0.0])
        if result.alert is not None:
            steps.append([rid, "alert", None, "sent" if result.alert.sent else result.alert.reason, None, 0.0])
        findings = [[rid, f.check, f.severity, f.target, f.message, f.value, f.limit] for f in result.findings]
        if findings:
            con.executemany(f"insert into {SCHEMA}.findings values (?, ?, ?, ?, ?, ?, ?)", findings)
        if steps:
            con.executemany(f"insert into {SCHEMA}.steps values (?, ?, ?, ?, ?, ?)", steps)
        if tables:
            con.executemany(f"insert into {SCHEMA}.source_tables values (?, ?, ?, ?, ?, ?, ?)", tables)
        if changes:
            con.executemany(f"insert into {SCHEMA}.schema_changes values (?, ?, ?)", changes)
        con.execute("commit")


def _source_table(unique_id: str) -> tuple[str, str]:
    """source.dusk.<source>.<table> -> (source, table)."""
    parts = unique_id.split(".")
    return (parts[-2], parts[-1]) if len(parts) >= 4 else ("", unique_id)
