"""The data diff: what tonight changes for readers, compared before it is published.

Every reader-facing relation (the tables and views of ``DUSK_PUBLISH_SCHEMAS`` but the ledger) as
tonight built it (the *candidate*) is compared with the copy readers have now (the served file on
DuckDB, the ``served_*`` schemas or namespaces on PostgreSQL and Spark):

- by its **unique key** where the dbt project declares one (a snapshot's ``dbt_scd_id``, a
  model's ``unique_key``, a ``unique`` or ``unique_combination`` test): rows added, removed and
  changed, and per column how many values changed;
- by **whole rows** otherwise (``except all`` both ways): rows added and removed, a changed row
  counting as one of each;
- columns added or removed, and columns whose type changed (compared as text).

A relation dbt left ``unchanged`` tonight, last built by a night readers already have (a published,
not partial night), is not compared: it is what they read. Everything runs in the warehouse, as
SQL (sqlglot writes Spark's), one query per relation.

A relation may carry a **gate**, in its dbt ``meta`` (or for a whole folder in dbt_project.yml)::

    meta:
      diff: {max_changed_share: 0.2, severity: error}

or for every relation by ``DUSK_DIFF_MAX_CHANGED_SHARE`` and ``DUSK_DIFF_SEVERITY``. A relation
whose rows added, removed or changed exceed that share of it raises a ``data_diff`` finding: a
``warn`` is alerted and published, an ``error`` keeps the night from readers (they keep the last
published night). ``DUSK_DIFF=0`` turns the comparison off.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from dusk import ledger
from dusk.record import UNCHANGED, Finding, RelationDiff, RunResult
from dusk.settings import PROD, Settings
from dusk.warehouse import ABOUT, LEDGER, Connection, column_types, table_names

log = logging.getLogger(__name__)

SERVED_ALIAS = "dusk_served_now"
"""The alias the readers' DuckDB file is attached under while it is compared."""


@dataclass(frozen=True)
class Sides:
    """Where a schema's candidate and readers' relations are, as SQL names."""

    candidate: Callable[[str], str]
    """``schema`` -> the candidate schema's SQL name."""
    served: Callable[[str], str]
    """``schema`` -> the readers' schema's SQL name."""
    candidate_tables: Callable[[str], list[str]]
    candidate_columns: Callable[[str, str], dict[str, str]]
    served_tables: Callable[[str], list[str]]
    served_columns: Callable[[str, str], dict[str, str]]
    published: bool = True
    """Whether readers have anything yet (else every relation is new)."""


def diff(settings: Settings, engine: str, con: Connection, record: RunResult) -> list[RelationDiff]:
    """The night's data diff, before the publish: recorded on ``record`` (its gates as findings)
    and in the ledger. Nothing when the night will not be published or the diff is off."""
    if not settings.monitor.diff or not record.publishable or record.dbt is None:
        return []
    started = time.monotonic()
    gates = Gates.of(settings, settings.target_path / "manifest.json")
    withheld = set(record.dbt.withheld_relations)
    unchanged = {gates.relation_of(n.unique_id) for n in record.dbt.nodes if n.status == UNCHANGED}
    with readers_copy(settings, engine, con) as sides:
        current = {gates.relation_of(uid) for uid in _current_nodes(con, sides)} if unchanged else set()

        def skip(relation: str) -> str | None:
            return "withheld" if relation in withheld else UNCHANGED if relation in unchanged & current else None

        diffs = compare_schemas(con, sides, _compared_schemas(settings), gates, skip)
    findings = gate_findings(diffs)
    for f in findings:
        (log.error if f.severity == "error" else log.warning)("diff %s: %s", f.target, f.message)
    record.findings.extend(findings)
    ledger.diffed(con, record, diffs, findings, time.monotonic() - started)
    return diffs


def _compared_schemas(settings: Settings) -> tuple[str, ...]:
    return tuple(s for s in settings.publish_schemas if s != LEDGER)


def _current_nodes(con: Connection, sides: Sides) -> set[str]:
    """The nodes whose relations readers have exactly as the warehouse holds them, if not rebuilt tonight:
    last built by the night readers have or an earlier one, that night published whole (not
    partial: a withheld relation kept an older copy)."""
    if not sides.published:
        return set()
    row = con.execute(f"select run_id from {sides.served(ABOUT)}.about").fetchone()
    return ledger.nodes_current_in(con, str(row[0])) if row else set()


@contextmanager
def readers_copy(settings: Settings, engine: str, con: Connection) -> Iterator[Sides]:
    """Where readers' relations are on this engine, beside the warehouse's."""
    if engine in ("postgres", "spark"):
        prefix = settings.postgres.served_prefix if engine == "postgres" else settings.spark.served_prefix
        yield Sides(
            candidate=lambda schema: f'"{schema}"',
            served=lambda schema: f'"{prefix}{schema}"',
            candidate_tables=lambda schema: table_names(con, schema),
            candidate_columns=lambda schema, table: column_types(con, schema, table),
            served_tables=lambda schema: table_names(con, prefix + schema),
            served_columns=lambda schema, table: column_types(con, prefix + schema, table),
            published=bool(table_names(con, prefix + ABOUT)),
        )
        return
    with duckdb_sides(con, settings.served_path) as sides:
        yield sides


@contextmanager
def duckdb_sides(con: Connection, served: Path) -> Iterator[Sides]:
    """The warehouse ``con`` holds against the readers' DuckDB file ``served``, attached read-only
    for the block (nothing published when it does not exist)."""
    with attached(con, served) as alias:
        yield Sides(
            candidate=lambda schema: f'"{schema}"',
            served=lambda schema: f'{alias}."{schema}"',
            candidate_tables=lambda schema: table_names(con, schema),
            candidate_columns=lambda schema, table: column_types(con, schema, table),
            served_tables=lambda schema: _duckdb_tables(con, alias, schema) if alias else [],
            served_columns=lambda schema, table: column_types(con, schema, table, catalog=alias),
            published=alias is not None,
        )


@contextmanager
def attached(con: Connection, path: Path, alias: str = SERVED_ALIAS) -> Iterator[str | None]:
    """A DuckDB file attached read-only for the block (None when it does not exist)."""
    if not path.exists():
        yield None
        return
    quoted = str(path).replace("'", "''")
    con.execute(f"attach '{quoted}' as {alias} (read_only)")
    try:
        yield alias
    finally:
        con.execute(f"detach {alias}")


def _duckdb_tables(con: Connection, catalog: str, schema: str) -> list[str]:
    rows = con.execute(
        "select table_name from information_schema.tables where table_catalog = ? and table_schema = ? order by 1",
        [catalog, schema],
    ).fetchall()
    return [str(name) for (name,) in rows]


@dataclass
class Gate:
    """A relation's unique key and its gate, from the dbt project."""

    key: list[str] | None = None
    max_changed_share: float | None = None
    severity: str = "warn"


class Gates:
    """Each relation's key and gate, read from dbt's manifest (``schema.table`` -> :class:`Gate`)."""

    def __init__(self, default: Gate, by_relation: dict[str, Gate], relations: dict[str, str]) -> None:
        self.default, self.by_relation, self.relations = default, by_relation, relations

    @classmethod
    def of(cls, settings: Settings, manifest_path: Path) -> Gates:
        m = settings.monitor
        default = Gate(None, m.diff_max_changed_share, m.diff_severity)
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            log.warning("diff: no dbt manifest at %s; rows are compared whole, with the default gate", manifest_path)
            return cls(default, {}, {})
        nodes = manifest.get("nodes", {})
        keys = _test_keys(nodes)
        by_relation: dict[str, Gate] = {}
        relations: dict[str, str] = {}
        for uid, node in nodes.items():
            if node.get("resource_type") not in ("model", "snapshot", "seed"):
                continue
            relation = f"{node['schema']}.{node.get('alias') or node['name']}"
            relations[uid] = relation
            config = node.get("config") or {}
            settings_ = ((config.get("meta") or {}).get("diff")) or (node.get("meta") or {}).get("diff") or {}
            share = settings_.get("max_changed_share", default.max_changed_share)
            severity = str(settings_.get("severity", default.severity)).lower()
            if severity not in ("warn", "error"):
                raise ValueError(f"{uid}: meta.diff.severity must be warn or error, got {severity!r}")
            try:
                share = None if share is None else float(share)
            except (TypeError, ValueError):
                share = -1.0
            if share is not None and not 0 <= share <= 1:
                raise ValueError(f"{uid}: meta.diff.max_changed_share must be a share between 0 and 1 (0.2 is 20 %)")
            by_relation[relation] = Gate(_key(node, keys.get(uid)), share, severity)
        return cls(default, by_relation, relations)

    def relation_of(self, unique_id: str) -> str:
        return self.relations.get(unique_id, unique_id)

    def __getitem__(self, relation: str) -> Gate:
        return self.by_relation.get(relation, self.default)


def _test_keys(nodes: dict[str, Any]) -> dict[str, list[str]]:
    """Per model, the columns a ``unique`` or ``unique_combination`` test declares unique (the
    narrowest)."""
    keys: dict[str, list[str]] = {}
    for node in nodes.values():
        meta = node.get("test_metadata") or {}
        attached_to = node.get("attached_node")
        if node.get("resource_type") != "test" or not attached_to:
            continue
        if meta.get("name") == "unique" and node.get("column_name"):
            columns = [str(node["column_name"])]
        elif meta.get("name") == "unique_combination":
            columns = [str(c) for c in (meta.get("kwargs") or {}).get("columns") or []]
        else:
            continue
        if columns and (attached_to not in keys or len(columns) < len(keys[attached_to])):
            keys[attached_to] = columns
    return keys


def _key(node: dict[str, Any], tested: list[str] | None) -> list[str] | None:
    if node.get("resource_type") == "snapshot":
        return ["dbt_scd_id"]  # one row per version; the business key repeats
    unique_key = (node.get("config") or {}).get("unique_key")
    if isinstance(unique_key, str) and unique_key:
        return [unique_key]
    if isinstance(unique_key, list) and unique_key:
        return [str(c) for c in unique_key]
    return tested


def compare_schemas(
    con: Connection,
    sides: Sides,
    schemas: tuple[str, ...],
    gates: Gates,
    skip: Callable[[str], str | None] = lambda relation: None,
) -> list[RelationDiff]:
    """Compare every candidate relation of ``schemas`` with the readers' copy."""
    diffs = []
    for schema in schemas:
        served = set(sides.served_tables(schema))
        for table in sides.candidate_tables(schema):
            relation = f"{schema}.{table}"
            gate = gates[relation]
            result = RelationDiff(relation, gate.key, max_changed_share=gate.max_changed_share, severity=gate.severity)
            diffs.append(result)
            reason = skip(relation)
            if reason is not None:
                result.status = reason
                continue
            started = time.monotonic()
            try:
                if table in served:
                    compare(con, sides, schema, table, result)
                else:
                    result.status = "new"
                    row = con.execute(f'select count(*) from {sides.candidate(schema)}."{table}"').fetchone()
                    result.rows_after = int(row[0]) if row else 0
            except Exception as exc:
                result.status, result.error = "error", str(exc).strip().splitlines()[0][:300]
                log.warning("diff: %s could not be compared: %s", relation, result.error)
            result.seconds = time.monotonic() - started
    return diffs


def compare(con: Connection, sides: Sides, schema: str, table: str, result: RelationDiff) -> None:
    """Fill ``result`` with how ``schema.table`` differs between the two sides (one query)."""
    after = sides.candidate_columns(schema, table)
    before = sides.served_columns(schema, table)
    result.added_columns = [c for c in after if c not in before]
    result.removed_columns = [c for c in before if c not in after]
    common = [c for c in after if c in before]
    result.retyped_columns = [c for c in common if after[c] != before[c]]
    cand = f'{sides.candidate(schema)}."{table}"'
    served = f'{sides.served(schema)}."{table}"'

    def value(side: str, column: str) -> str:
        name = f'{side}."{_q(column)}"'
        return f"cast({name} as varchar)" if column in result.retyped_columns else name

    key = result.key if result.key and all(k in common for k in result.key) else None
    if result.key and key is None:
        log.warning("diff: %s lacks its key %s on one side; whole rows are compared", result.relation, result.key)
    result.key = key
    if key is None:
        _by_rows(con, cand, served, common, result)
        return
    others = [c for c in common if c not in key]
    here = "dusk_diff_here"
    differs = [f"({value('c', c)} is distinct from {value('s', c)})" for c in others]
    both = f"c.{here} = 1 and s.{here} = 1"
    columns = ", ".join(f'"{_q(c)}"' for c in common)
    sums = [
        f"sum(case when s.{here} is null then 1 else 0 end)",
        f"sum(case when c.{here} is null then 1 else 0 end)",
        f"sum(case when {both} and ({' or '.join(differs) or 'false'}) then 1 else 0 end)",
        f"count(c.{here})",
        f"count(s.{here})",
        f"min((select count(*) from {cand}))",
        f"min((select count(*) from {served}))",
        *(f"sum(case when {both} and {d} then 1 else 0 end)" for d in differs),
    ]
    on = " and ".join(f'c."{_q(k)}" = s."{_q(k)}"' for k in key)
    row = con.execute(
        f"select {', '.join(sums)} from (select {columns}, 1 as {here} from {cand}) as c "
        f"full outer join (select {columns}, 1 as {here} from {served}) as s on {on}"
    ).fetchone()
    counts = [int(v or 0) for v in row]
    if counts[3:5] != counts[5:7]:  # a key repeats on a side: matching by it would miss rows
        log.warning("diff: %s repeats keys of %s; whole rows are compared", result.relation, key)
        result.key = None
        _by_rows(con, cand, served, common, result)
        return
    result.added, result.removed, result.changed, result.rows_after, result.rows_before = counts[:5]
    result.columns = {c: n for c, n in zip(others, counts[7:], strict=True) if n}


def _by_rows(con: Connection, cand: str, served: str, common: list[str], result: RelationDiff) -> None:
    """No key: rows added and removed as multisets of whole rows (``except all``)."""
    columns = ", ".join(f'"{_q(c)}"' for c in common) or "1"
    row = con.execute(
        f"select (select count(*) from {cand}), (select count(*) from {served}), "
        f"(select count(*) from (select {columns} from {cand} except all select {columns} from {served}) as a), "
        f"(select count(*) from (select {columns} from {served} except all select {columns} from {cand}) as r)"
    ).fetchone()
    result.rows_after, result.rows_before, result.added, result.removed = (int(v or 0) for v in row)


def _q(name: str) -> str:
    return name.replace('"', '""')


def gate_findings(diffs: list[RelationDiff]) -> list[Finding]:
    """A ``data_diff`` finding per relation past its gate."""
    findings = []
    for d in diffs:
        share = d.share
        if not d.breached or share is None or d.max_changed_share is None:
            continue
        what = f"{d.added:,} added, {d.removed:,} removed" + (f", {d.changed:,} changed" if d.changed else "")
        findings.append(
            Finding(
                "data_diff",
                d.severity,
                d.relation,
                f"{share:.1%} of its rows differ from what readers have ({what}), above its gate of "
                f"{d.max_changed_share:.1%} (meta.diff.max_changed_share or DUSK_DIFF_MAX_CHANGED_SHARE): check "
                "tonight's sources and models; raise the gate if the change is expected",
                share,
                d.max_changed_share,
            )
        )
    return findings


class DiffUnavailable(RuntimeError):
    """``dusk diff`` cannot compare here (the message says why and what to do)."""


def compare_environment(settings: Settings) -> list[RelationDiff]:
    """``dusk diff``: this environment's build against what prod's readers have, relation by
    relation, the way a night's diff compares (in prod: the warehouse as the last night left it
    against the served copy, e.g. after a night that was not published). Outside prod, only the
    relations the environment built are compared (with ``--defer``, what changed). Raises
    :class:`DiffUnavailable`."""
    gates = Gates.of(settings, settings.target_path / "manifest.json")
    schemas = _compared_schemas(settings)
    if settings.env == PROD:
        from dusk.warehouse import open_warehouse

        warehouse = open_warehouse(settings)
        if not warehouse.exists():
            raise DiffUnavailable(f"no warehouse at {warehouse.describe()} yet: run a night first")
        try:
            with warehouse.connect() as con, readers_copy(settings, warehouse.engine, con) as sides:
                if not sides.published:
                    raise DiffUnavailable("nothing was published yet: every relation would be new")
                return compare_schemas(con, sides, schemas, gates)
        except duckdb.IOException as exc:
            raise DiffUnavailable(f"the warehouse is in use (a night is running?): {exc}") from exc
    if settings.target != "duckdb" or settings.prod_served is None:
        raise DiffUnavailable(
            f"dusk diff --env {settings.env} compares two DuckDB files; on {settings.target} the environments are "
            "databases or catalogs of their own, which one query cannot read across"
        )
    if not settings.warehouse.exists():
        raise DiffUnavailable(f"{settings.env} has no warehouse yet: dusk --env {settings.env} run --defer")
    if not settings.prod_served.exists():
        raise DiffUnavailable(f"prod has published nothing yet ({settings.prod_served})")
    with (
        duckdb.connect(str(settings.warehouse), read_only=True) as con,
        duckdb_sides(con, settings.prod_served) as sides,
    ):
        return compare_schemas(con, sides, schemas, gates)
