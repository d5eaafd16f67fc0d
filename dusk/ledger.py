"""The run ledger: every run's steps, rows, dbt nodes, quarantine and freshness, kept in the
warehouse (schema ``dusk_ledger``, created by :mod:`dusk.warehouse`) across runs. dbt declares it
as the source ``ledger`` (models/ledger/_ledger__sources.yml), so it is documented and queryable.

It is written **as the night goes**: a run row (``running``) when the night starts, each step's
rows as the step ends, and the run closed (its status and time) at the end. A killed run leaves
its ``running`` row, which the next run marks ``killed``. This module is also the one reader of
the ledger: status, the report, the audit's monitoring and the build's event window all ask it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from dusk.record import DbtResult, Finding, RelationDiff, RunResult
from dusk.settings import Settings
from dusk.warehouse import LEDGER, Connection, LedgerError, Reading, insert_rows, open_warehouse, table_names
from ingestion.result import SourceResult

SCHEMA = LEDGER

__all__ = ["SCHEMA", "Connection", "LedgerError", "Reading"]


# -- writing, as the night goes ---------------------------------------------------------------


def open_run(con: Connection, record: RunResult) -> None:
    """The run's row, ``running``; runs left ``running`` by a killed run become ``killed`` (the
    run lock says no other run is alive)."""
    con.execute(f"update {SCHEMA}.runs set status = 'killed' where status = 'running' and run_id != ?", [record.run_id])
    con.execute(f"delete from {SCHEMA}.runs where run_id = ?", [record.run_id])
    con.execute(
        f"insert into {SCHEMA}.runs (run_id, status, started_at, seconds, failed_sources, error, mode) "
        "values (?, 'running', ?, 0, null, null, ?)",
        [record.run_id, record.started_at.replace(tzinfo=None), record.mode],
    )


def close_run(con: Connection, record: RunResult, schema: str = SCHEMA) -> None:
    """The run's status, time, failed sources and error (``schema``: the ledger's copy being
    published)."""
    con.execute(
        f"update {schema}.runs set status = ?, seconds = ?, failed_sources = ?, error = ? where run_id = ?",
        [record.status, record.seconds, ", ".join(record.failed_sources) or None, record.error, record.run_id],
    )


@contextmanager
def _transaction(con: Connection) -> Iterator[None]:
    """One step's rows are in the ledger whole or not at all."""
    con.execute("begin")
    try:
        yield
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


STEP_COLUMNS = "(run_id, step, target, status, attempts, seconds, sql_seconds)"
"""A step row's columns, named: an older ledger gains ``sql_seconds`` as its last column."""


def _insert(
    con: Connection, table: str, rows: Sequence[Sequence[Any]], schema: str = SCHEMA, columns: str = ""
) -> None:
    insert_rows(con, f"{schema}.{table}", rows, columns)


def step(
    con: Connection,
    record: RunResult,
    name: str,
    target: str | None,
    status: str,
    seconds: float,
    attempts: int | None = None,
    schema: str = SCHEMA,
    sql_seconds: float | None = None,
) -> None:
    """One step's row."""
    row = [record.run_id, name, target, status, attempts, seconds, sql_seconds]
    _insert(con, "steps", [row], schema, STEP_COLUMNS)


def ingested(con: Connection, record: RunResult, sources: list[SourceResult]) -> None:
    """The ingest step: a row per source, its tables' counts and schema changes (one transaction)."""
    rid = record.run_id
    with _transaction(con):
        rows = [[rid, "ingest", s.source, s.status, s.attempts, s.seconds, None] for s in sources]
        _insert(con, "steps", rows, columns=STEP_COLUMNS)
        _insert(
            con,
            "source_tables",
            [
                [rid, s.source, t.table, t.extracted, t.deleted, t.quarantined, t.loaded]
                for s in sources
                for t in s.tables
            ],
        )
        _insert(con, "schema_changes", [[rid, s.source, c] for s in sources for c in s.schema_changes])


def built(con: Connection, record: RunResult, dbt: DbtResult) -> None:
    """The build step: its row, every dbt node, freshness, and the quarantine as dbt left it."""
    rid = record.run_id
    with _transaction(con):
        status = "ok" if dbt.ok else "failed"
        step(con, record, "dbt", "build, freshness, docs", status, dbt.seconds, 1, sql_seconds=dbt.sql_seconds)
        fields: tuple[str, ...] = ("unique_id", "name", "resource_type", "layer", "status", "seconds")
        fields += ("rows_affected", "failures", "failures_table", "message")
        nodes = [[rid, *(getattr(n, f) for f in fields)] for n in dbt.nodes]
        _insert(con, "dbt_nodes", nodes)
        _insert(con, "freshness", [[rid, *_source_table(f.unique_id), f.status] for f in dbt.freshness])
        _insert(con, "quarantine", [[rid, *row] for row in quarantine_counts(con)])


def audited(con: Connection, record: RunResult, findings: list[Finding], seconds: float) -> None:
    """The audit step: its row and its findings."""
    rid = record.run_id
    with _transaction(con):
        failed = any(f.severity == "error" for f in findings)
        step(con, record, "audit", "monitoring", "failed" if failed else "ok", seconds, 1)
        _findings(con, rid, findings)


def _findings(con: Connection, run_id: str, findings: list[Finding]) -> None:
    _insert(con, "findings", [[run_id, f.check, f.severity, f.target, f.message, f.value, f.limit] for f in findings])


def diffed(
    con: Connection, record: RunResult, diffs: list[RelationDiff], findings: list[Finding], seconds: float
) -> None:
    """The data diff: its step row, a row per relation and the gates' findings (one transaction)."""
    rid = record.run_id
    with _transaction(con):
        failed = any(f.severity == "error" for f in findings)
        step(con, record, "diff", f"{len(diffs)} relations", "failed" if failed else "ok", seconds, 1)
        rows = [
            [
                rid, d.relation, d.status, ", ".join(d.key) if d.key else None, d.rows_before, d.rows_after,
                d.added, d.removed, d.changed, json.dumps(d.columns) if d.columns else None,
                d.max_changed_share, d.severity, d.error, _schema_change(d),
            ]
            for d in diffs
        ]  # fmt: skip
        _insert(con, "data_diff", rows)
        _findings(con, rid, findings)


def _schema_change(d: RelationDiff) -> str | None:
    """The columns a relation gained, lost or retyped, as JSON (None: none)."""
    change = {"added": d.added_columns, "removed": d.removed_columns, "retyped": d.retyped_columns}
    return json.dumps({k: v for k, v in change.items() if v}) if d.reshaped else None


def _source_table(unique_id: str) -> tuple[str, str]:
    """source.dusk.<source>.<table> -> (source, table)."""
    parts = unique_id.split(".")
    return (parts[-2], parts[-1]) if len(parts) >= 4 else ("", unique_id)


# -- reading ----------------------------------------------------------------------------------


@contextmanager
def open_ledger(settings: Settings) -> Iterator[tuple[Connection, Reading]]:
    """A connection to the ledger for a reader in another process, and where it reads (on DuckDB
    the served file when a run holds the warehouse: DuckDB lets no other process read a file
    while one writes)."""
    with open_warehouse(settings).read() as (con, reading):
        yield con, reading


def quarantine_views(con: Connection) -> list[tuple[str, str]]:
    """(source, view) of every quarantine view dbt built: ``staging.quarantine_<source>``, one per
    source (the project's convention, models/staging/<source>/quarantine_<source>.sql)."""
    views = [name for name in table_names(con, "staging") if name.startswith("quarantine_")]
    return [(v.removeprefix("quarantine_"), v) for v in views]


def quarantine_counts(con: Connection) -> list[tuple[str, str, str, int]]:
    """(source, table, reason, rows) held in quarantine now."""
    rows: list[tuple[str, str, str, int]] = []
    for source, view in quarantine_views(con):
        rows += [
            (source, str(t), str(r), int(n))
            for t, r, n in con.execute(
                f'select table_name, quarantine_reason, count(*) from staging."{view}" group by 1, 2 order by 1, 2'
            ).fetchall()
        ]
    return rows


def has_runs(con: Connection) -> bool:
    """Whether the ledger exists and holds a run."""
    if "runs" not in table_names(con, SCHEMA):
        return False
    last = con.execute(f"select count(*) from {SCHEMA}.runs").fetchone()
    return bool(last and last[0])


def run_clock(con: Connection, limit: int) -> list[tuple[Any, ...]]:
    """(run_id, status, started_at, seconds, error), newest first: what the dead-man's switch reads."""
    return con.execute(
        f"select run_id, status, started_at, seconds, error from {SCHEMA}.runs order by run_id desc limit ?", [limit]
    ).fetchall()


def recent_runs(con: Connection, limit: int) -> list[tuple[Any, ...]]:
    """(run_id, status, seconds, failed_sources, error), newest first."""
    return con.execute(
        f"select run_id, status, seconds, failed_sources, error from {SCHEMA}.runs order by run_id desc limit ?",
        [limit],
    ).fetchall()


def sources_of(con: Connection, run_id: str) -> list[tuple[Any, ...]]:
    """(source, status, attempts, rows loaded, last run that loaded it) of a run's ingest step."""
    return con.execute(
        f"""
        select s.target, s.status, s.attempts,
            (select sum(t.loaded) from {SCHEMA}.source_tables t where t.run_id = s.run_id and t.source = s.target),
            (select max(o.run_id) from {SCHEMA}.steps o where o.target = s.target and o.status = 'ok')
        from {SCHEMA}.steps s where s.run_id = ? and s.step = 'ingest' order by 1
        """,
        [run_id],
    ).fetchall()


def steps_of(con: Connection, run_id: str) -> list[tuple[Any, ...]]:
    """(step, target, status, attempts, seconds) of a run, in the order they were written."""
    return con.execute(
        f"select step, target, status, attempts, seconds from {SCHEMA}.steps where run_id = ?", [run_id]
    ).fetchall()


def freshness_of(con: Connection, run_id: str) -> list[tuple[Any, ...]]:
    """(source, table, status) of a run's freshness check."""
    return con.execute(
        f"select source, table_name, status from {SCHEMA}.freshness where run_id = ? order by 1, 2", [run_id]
    ).fetchall()


def failing_of(con: Connection, run_id: str) -> list[tuple[Any, ...]]:
    """(name, resource type, status, failures, rows kept in, message) of a run's failing dbt nodes."""
    return con.execute(
        f"select name, resource_type, status, failures, failures_table, message from {SCHEMA}.dbt_nodes "
        "where run_id = ? and status in ('fail', 'error', 'warn', 'runtime error') order by name",
        [run_id],
    ).fetchall()


def quarantine_of(con: Connection, run_id: str) -> list[tuple[Any, ...]]:
    """(source, table, reason, rows) in quarantine after a run's build."""
    return con.execute(
        f"select source, table_name, reason, row_count from {SCHEMA}.quarantine where run_id = ? order by 1, 2, 3",
        [run_id],
    ).fetchall()


def findings_of(con: Connection, run_id: str) -> list[tuple[Any, ...]]:
    """(check, severity, target, message) of a run's audit."""
    return con.execute(
        f"select check_name, severity, target, message from {SCHEMA}.findings where run_id = ? order by 1, 3",
        [run_id],
    ).fetchall()


def loaded_history(con: Connection, source: str, table: str, window: int, before: str) -> list[int]:
    """Rows loaded into ``source.table`` by the last ``window`` nightly runs before the run
    ``before`` whose ingest of the source succeeded (the table's first, full load left out),
    newest first."""
    return [
        int(n)
        for (n,) in con.execute(
            f"""
            select t.loaded from {SCHEMA}.source_tables t
            join {SCHEMA}.steps s on s.run_id = t.run_id and s.step = 'ingest' and s.target = t.source
            join {SCHEMA}.runs r on r.run_id = t.run_id
            where t.source = ? and t.table_name = ? and s.status = 'ok' and coalesce(r.mode, 'run') = 'run'
              and t.run_id < ?
              and t.run_id > (select min(f.run_id) from {SCHEMA}.source_tables f
                              where f.source = t.source and f.table_name = t.table_name)
            order by t.run_id desc limit ?
            """,
            [source, table, before, window],
        ).fetchall()
    ]


def first_run_started(con: Connection) -> datetime | None:
    """When the installation's first run started."""
    row = con.execute(f"select min(started_at) from {SCHEMA}.runs").fetchone()
    return row[0] if row else None


def last_loaded(con: Connection, source: str) -> datetime | None:
    """When the last run that loaded ``source`` successfully started."""
    row = con.execute(
        f"""
        select max(r.started_at) from {SCHEMA}.steps s join {SCHEMA}.runs r using (run_id)
        where s.step = 'ingest' and s.target = ? and s.status = 'ok'
        """,
        [source],
    ).fetchone()
    return row[0] if row else None


def last_built(con: Connection) -> datetime:
    """When the last run whose dbt step succeeded started (UTC; the epoch when none did)."""
    row = con.execute(
        f"select max(r.started_at) from {SCHEMA}.runs r join {SCHEMA}.steps s using (run_id) "
        "where s.step = 'dbt' and s.status = 'ok'"
    ).fetchone()
    since = row[0] if row and row[0] is not None else datetime(1970, 1, 1)
    return since.replace(tzinfo=UTC)


def nodes_current_in(con: Connection, run_id: str) -> set[str]:
    """The models, snapshots and seeds last built by run ``run_id`` or before it, when that run
    ended ``success``: what readers of its published copy have as the warehouse holds it now
    (unless rebuilt since). Empty for another run's status (a partial night withheld some)."""
    status = con.execute(f"select status from {SCHEMA}.runs where run_id = ?", [run_id]).fetchone()
    if not status or status[0] != "success":
        return set()
    rows = con.execute(
        f"select unique_id from {SCHEMA}.dbt_nodes where resource_type in ('model', 'snapshot', 'seed') "
        "group by unique_id having max(case when status = 'success' then run_id end) <= ?",
        [run_id],
    ).fetchall()
    return {str(uid) for (uid,) in rows}


def diff_of(con: Connection, run_id: str) -> list[tuple[Any, ...]]:
    """The run's data diff: relation, status, key, rows before and after, added, removed,
    changed, the changed columns (JSON), the gate and its severity, the error, the columns
    added, removed and retyped (JSON)."""
    return con.execute(
        "select relation, status, key_columns, rows_before, rows_after, added, removed, changed, changed_columns, "
        f"max_changed_share, severity, error, changed_schema from {SCHEMA}.data_diff where run_id = ? "
        "order by relation",
        [run_id],
    ).fetchall()
