"""Column-level lineage: for every column of every model, the columns it is computed from, read
from dbt's compiled SQL with sqlglot (in the warehouse's dialect), and from there the raw columns
it derives from, each marked *hashed* when a hash (SHA-256, SHA-1, MD5) lies on the way.

It answers "where does this mart column come from?" (the report, ``data/lineage/columns.json``)
and proves a promise: a column that derives from a source column tagged ``pii`` reaches a mart
only hashed (the audit's ``pii_unhashed`` check, an error).

Each model's SQL is traced once and kept in ``columns.json`` with a hash of its SQL and of the
columns it reads: a night traces again only what changed (sqlglot takes ~50 ms a model here).
A model whose SQL sqlglot cannot trace is named, its columns left out (never guessed). Snapshots
keep their source's columns, so each of their columns is traced to the same-named column of what
they select from; dbt's own columns (``dbt_scd_id``...) come from nowhere upstream.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.lineage import Node, lineage

log = logging.getLogger(__name__)

DIALECTS = {"duckdb": "duckdb", "postgres": "postgres", "spark": "spark"}
HASHES = (exp.SHA2, exp.SHA2Digest, exp.SHA, exp.SHA1Digest, exp.MD5, exp.MD5Digest)
"""What sqlglot parses each engine's hash functions to (PostgreSQL's ``sha256`` is a digest)."""
HASH_NAMES = {"sha256", "sha512", "sha1", "sha2", "md5", "digest", "hash"}
"""Hash functions a dialect leaves unparsed (anonymous calls), by name."""
VERSION = 2
"""Of the kept file and of the tracing: another version is traced again whole."""


@dataclass(frozen=True, order=True)
class Origin:
    """A column a model column is computed from: its relation (``schema.table``), its name,
    whether it is hashed on the way, and whether it only decides (it appears in conditions only,
    such as ``case when email is null then 'invalid'``: its value does not pass)."""

    relation: str
    column: str
    hashed: bool = False
    condition: bool = False


@dataclass
class Traced:
    """One relation's columns and their origins (direct: the relations it reads)."""

    key: str
    """A hash of the SQL traced and of the columns it reads."""
    columns: dict[str, list[Origin]]
    error: str | None = None
    """Why sqlglot could not trace the SQL (the columns are then unknown)."""


def catalog(con: Any, schemas: Iterable[str]) -> dict[str, dict[str, dict[str, str]]]:
    """The warehouse's columns by schema, table and column (lower case), for the schemas named;
    on Spark (no information schema) empty: sqlglot then traces what the SQL names."""
    if con is None or callable(getattr(con, "tables", None)):
        return {}
    wanted = sorted({s.lower() for s in schemas})
    marks = ", ".join("?" for _ in wanted)
    rows = con.execute(
        "select lower(table_schema), lower(table_name), lower(column_name), data_type "
        "from information_schema.columns "
        f"where table_catalog = current_database() and lower(table_schema) in ({marks})",
        wanted,
    ).fetchall()
    found: dict[str, dict[str, dict[str, str]]] = {}
    for schema, table, column, kind in rows:
        found.setdefault(schema, {}).setdefault(table, {})[column] = str(kind)
    return found


def relation_of(node: dict[str, Any]) -> str | None:
    """``schema.table`` of a manifest node or source (lower case); None for what has no relation."""
    kind = node.get("resource_type")
    if kind not in ("model", "snapshot", "seed", "source"):
        return None
    if (node.get("config") or {}).get("materialized") == "ephemeral":
        return None
    name = node.get("identifier") if kind == "source" else node.get("alias")
    return f"{node['schema']}.{name or node['name']}".lower()


def compiled_sql(target_path: Path, node: dict[str, Any]) -> str | None:
    """The node's SQL as dbt compiled it last (``target/compiled``); a microbatch model's latest
    batch. None when it was never compiled."""
    path = target_path / "compiled" / node["package_name"] / node["original_file_path"]
    if path.is_dir():  # a microbatch model: one file per batch
        batches = sorted(path.glob("*.sql"), key=lambda p: p.stat().st_mtime)
        path = batches[-1] if batches else path
    return path.read_text() if path.is_file() else None


def trace(
    manifest: dict[str, Any],
    target_path: Path,
    warehouse: dict[str, dict[str, dict[str, str]]],
    engine: str,
    kept: dict[str, Traced] | None = None,
) -> dict[str, Traced]:
    """Every model's and snapshot's columns with their direct origins, by relation; ``kept``:
    what an earlier night traced, reused where the key is the same."""
    kept = kept or {}
    nodes = manifest.get("nodes") or {}
    by_id = {**nodes, **(manifest.get("sources") or {})}
    traced: dict[str, Traced] = {}
    for node in nodes.values():
        relation = relation_of(node)
        if relation is None or node["resource_type"] not in ("model", "snapshot"):
            continue
        parents = [p for p in (node.get("depends_on") or {}).get("nodes") or [] if relation_of(by_id.get(p) or {})]
        reads = {r: _columns(warehouse, r) for r in sorted({relation_of(by_id[p]) or "" for p in parents})}
        if node["resource_type"] == "snapshot":
            key = _key(json.dumps(reads, sort_keys=True), relation)
            previous = kept.get(relation)
            traced[relation] = previous if previous is not None and previous.key == key else _snapshot(key, reads)
            continue
        sql = compiled_sql(target_path, node)
        if sql is None:
            continue
        key = _key(sql, json.dumps(reads, sort_keys=True))
        previous = kept.get(relation)
        traced[relation] = (
            previous if previous is not None and previous.key == key else _model(key, sql, warehouse, engine)
        )
    return traced


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _columns(warehouse: dict[str, dict[str, dict[str, str]]], relation: str) -> list[str]:
    schema, _, table = relation.partition(".")
    return sorted((warehouse.get(schema) or {}).get(table) or {})


def _snapshot(key: str, reads: dict[str, list[str]]) -> Traced:
    columns: dict[str, list[Origin]] = {}
    for relation, names in reads.items():
        for name in names:
            columns.setdefault(name, []).append(Origin(relation, name))
    return Traced(key=key, columns=columns)


def _model(key: str, sql: str, warehouse: dict[str, dict[str, dict[str, str]]], engine: str) -> Traced:
    dialect = DIALECTS.get(engine, engine)
    try:
        roots = lineage(None, sql, schema=warehouse, dialect=dialect)
    except (sqlglot.errors.SqlglotError, KeyError, ValueError, AttributeError, RecursionError) as exc:
        log.info("column lineage: %s", exc)
        return Traced(key=key, columns={}, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    columns: dict[str, list[Origin]] = {}
    for name, root in roots.items():
        columns[name.lower()] = sorted(set(_origins(root, hashed=False, condition=False)))
    return Traced(key=key, columns=columns)


def _origins(node: Node, hashed: bool, condition: bool) -> Iterable[Origin]:
    """The leaves under ``node``: table columns, with whether a hash lies on the way and whether
    the way passes through a condition only."""
    expression = node.expression if isinstance(node.expression, exp.Expr) else None
    hashed = hashed or (expression is not None and _hashes(expression))
    if not node.downstream:
        if isinstance(node.source, exp.Table) and node.source.name:
            relation = f"{node.source.db}.{node.source.name}".lower()
            yield Origin(relation, node.name.rsplit(".", 1)[-1].lower(), hashed, condition)
        return
    for child in node.downstream:
        decides = expression is not None and _only_in_conditions(expression, child.name)
        yield from _origins(child, hashed, condition or decides)


def _hashes(expression: exp.Expr) -> bool:
    """Whether a hash function is applied anywhere in ``expression``."""
    if expression.find(*HASHES) is not None:
        return True
    return any(f.name.lower() in HASH_NAMES for f in expression.find_all(exp.Anonymous))


def _only_in_conditions(expression: exp.Expr, name: str) -> bool:
    """Whether the column ``name`` (``alias.column``) appears in ``expression`` only inside
    predicates (comparisons, ``is``, ``like``, ``and``/``or``/``not``)."""
    table, _, column = name.lower().rpartition(".")
    hits = [
        c
        for c in expression.find_all(exp.Column)
        if c.name.lower() == column and (not table or not c.table or c.table.lower() == table)
    ]
    return bool(hits) and all(_in_condition(c, expression) for c in hits)


def _in_condition(node: exp.Expr, root: exp.Expr) -> bool:
    parent = node.parent
    while parent is not None and parent is not root:
        if isinstance(parent, exp.Predicate | exp.Connector | exp.Not):
            return True
        parent = parent.parent
    return False


def to_sources(traced: dict[str, Traced], relation: str, column: str) -> set[Origin]:
    """The columns of relations nothing here builds (raw tables, seeds' sources) that
    ``relation.column`` derives from, through every model on the way."""
    found: set[Origin] = set()
    todo = [Origin(relation, column)]
    seen: set[Origin] = set()
    while todo:
        at = todo.pop()
        if at in seen:
            continue
        seen.add(at)
        model = traced.get(at.relation)
        if model is None:
            found.add(at)
            continue
        for origin in model.columns.get(at.column, []):
            todo.append(
                Origin(origin.relation, origin.column, at.hashed or origin.hashed, at.condition or origin.condition)
            )
    return found


def pii_columns(manifest: dict[str, Any]) -> set[tuple[str, str]]:
    """(relation, column) of every source and model column tagged ``pii``."""
    found = set()
    for node in [*(manifest.get("sources") or {}).values(), *(manifest.get("nodes") or {}).values()]:
        relation = relation_of(node)
        for name, column in (node.get("columns") or {}).items():
            tags = [*(column.get("tags") or []), *((column.get("config") or {}).get("tags") or [])]
            if relation and "pii" in tags:
                found.add((relation, name.lower()))
    return found


def unhashed_pii(traced: dict[str, Traced], pii: set[tuple[str, str]], schemas: Iterable[str]) -> list[str]:
    """Columns of relations in ``schemas`` (the reader-facing ones) that derive from a column
    tagged ``pii`` with no hash on the way: ``marts.customers.email <- raw_shop.customers.email``."""
    wanted = {s.lower() for s in schemas}
    found = []
    for relation, model in sorted(traced.items()):
        if relation.partition(".")[0] not in wanted:
            continue
        for column in sorted(model.columns):
            bare = sorted(
                {
                    f"{o.relation}.{o.column}"
                    for o in to_sources(traced, relation, column)
                    if not o.hashed and not o.condition and (o.relation, o.column) in pii
                }
            )
            if bare:
                found.append(f"{relation}.{column} <- {', '.join(bare)}")
    return found


def load(path: Path) -> dict[str, Traced]:
    """What an earlier night traced (empty when there is nothing, or of another layout)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if body.get("version") != VERSION:
        return {}
    return {
        relation: Traced(
            key=entry["key"],
            columns={c: [Origin(**o) for o in origins] for c, origins in entry["columns"].items()},
            error=entry.get("error"),
        )
        for relation, entry in (body.get("relations") or {}).items()
    }


def save(path: Path, traced: dict[str, Traced]) -> None:
    """``columns.json``: each relation's columns, their direct origins, and the key they were
    traced with; written beside and renamed over, whole or not at all."""
    body = {
        "version": VERSION,
        "relations": {
            relation: {
                "key": t.key,
                "error": t.error,
                "columns": {c: [asdict(o) for o in os] for c, os in t.columns.items()},
            }
            for relation, t in sorted(traced.items())
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1))
    tmp.replace(path)
