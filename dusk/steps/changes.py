"""What a night's dbt build needs: only the nodes whose inputs changed since they were last built.

A node (model, snapshot, seed, data test) is built again when

- the raw tables it reads changed since it was last built: each raw table has a *fingerprint*
  (its row count and newest dlt load id: an insert or update brings a new load id, a delete lowers
  the count), and each node remembers the fingerprints it was built from;
- it was never built, or failed, errored, warned or was skipped the last time it ran, or it was
  left out because its source failed (it has no record);
- its code, configuration, seed or a macro it uses changed since the last night (dbt's own
  ``state:modified``, against the manifest kept here);
- its relation is missing from the warehouse (dropped by hand, a warehouse restored);
- it is tagged ``every_night`` (a test that reads the clock, such as ``recency``);

and, through dbt's ``+``, everything downstream of such a node. The rest is left as it is and
counts as *unchanged*: it passed against exactly the data it would see again.

The run ledger's own tables change every night (the runner writes tonight's row before the
build) and have no fingerprint. What they feed (the ledger's tests) is built with any night that
builds something else, but alone it does not make a night build: a night where nothing else
changed, and whose project files are those of the saved manifest (so ``state:modified`` selects
nothing), runs no ``dbt build`` at all (an *idle* selection). The runner writes the ledger under
its primary key, one transaction per step; full nights test it whatever happened.

The state lives in ``<data dir>/state/``: a folder per saved night holding dbt's ``manifest.json``
and ``nodes.json`` (each node's fingerprints), and ``current``, naming the folder, replaced in one
step. A night killed before it saved its state leaves the previous one, so the next night builds at
least as much. The state belongs to one warehouse: on another one (a new engine, another file)
every node is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dusk.settings import PROJECT_DIR
from dusk.warehouse import LEDGER, table_names

if TYPE_CHECKING:
    from dbt.contracts.graph.manifest import Manifest

log = logging.getLogger(__name__)

BUILT = ("success", "pass")
"""The statuses after which a node is recorded as built (a warned test runs again, so that its
warning is reported every night it holds)."""
KINDS = ("model", "snapshot", "seed", "test")
"""The node kinds a night builds and records. Unit tests follow their model (dbt selects them
with it); ephemeral models never run on their own."""
EVERY_NIGHT = "every_night"
"""The dbt tag of nodes built every night whatever changed."""
PROJECT_PATHS = (
    "model-paths",
    "seed-paths",
    "snapshot-paths",
    "macro-paths",
    "test-paths",
    "analysis-paths",
    "docs-paths",
)


@dataclass
class BuildState:
    """What the nights before built, as kept in the state folder."""

    folder: Path | None = None
    """The saved night's folder (with dbt's ``manifest.json``); None: there is none."""
    warehouse: str | None = None
    """The warehouse the state belongs to (its label)."""
    nodes: dict[str, dict[str, str | None]] = field(default_factory=dict)
    """Per unique id of a node built successfully: the fingerprints of the raw tables (source
    unique ids) it was built from."""
    full_at: datetime | None = None
    """When a night last built every node."""
    docs_key: str | None = None
    """The :func:`project_key` of the project the docs were last generated from."""
    catalog_key: str | None = None
    """The :func:`catalog_key` of the warehouse the docs show (None: unknown, or on Spark)."""
    manifest_key: str | None = None
    """The :func:`project_key` of the project the kept manifest was parsed from."""

    @property
    def manifest(self) -> Path | None:
        """The folder dbt's ``--state`` reads (None: no manifest was kept)."""
        if self.folder is not None and (self.folder / "manifest.json").exists():
            return self.folder
        return None


def load(state_dir: Path, warehouse: str) -> BuildState:
    """The state the last night saved for ``warehouse`` (empty when none was, or for another)."""
    try:
        folder = state_dir / (state_dir / "current").read_text().strip()
        saved = json.loads((folder / "nodes.json").read_text())
    except (OSError, ValueError):
        return BuildState()
    if saved.get("warehouse") != warehouse:
        log.info("the saved build state is of %s, not %s: every node is built", saved.get("warehouse"), warehouse)
        return BuildState()
    full_at = saved.get("full_at")
    return BuildState(
        folder=folder,
        warehouse=warehouse,
        nodes=dict(saved.get("nodes") or {}),
        full_at=datetime.fromisoformat(full_at) if full_at else None,
        docs_key=saved.get("docs_key"),
        catalog_key=saved.get("catalog_key"),
        manifest_key=saved.get("manifest_key"),
    )


def save(state_dir: Path, run_id: str, state: BuildState, manifest_json: Path | None) -> Path:
    """Write ``state`` as the run's folder, with ``manifest_json`` (None: the previous state's
    manifest is kept), then point ``current`` at it in one step and remove older folders."""
    folder = state_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    kept = manifest_json
    if kept is None and state.manifest is not None:
        kept = state.manifest / "manifest.json"
    if kept is not None and kept.exists():
        _write(folder / "manifest.json", kept.read_bytes())
    body = {
        "warehouse": state.warehouse,
        "full_at": state.full_at.isoformat() if state.full_at else None,
        "docs_key": state.docs_key,
        "catalog_key": state.catalog_key,
        "manifest_key": state.manifest_key,
        "nodes": state.nodes,
    }
    _write(folder / "nodes.json", json.dumps(body, indent=1, sort_keys=True))
    _write(state_dir / "current", run_id)
    for old in state_dir.iterdir():
        if old.is_dir() and old.name != run_id:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _write(path: Path, data: str | bytes) -> None:
    """``path`` whole or not at all: written beside it, flushed to the disk, then renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def project_key(project_dir: Path = PROJECT_DIR) -> str:
    """A hash of the dbt project's files (dbt_project.yml and everything under its model, seed,
    snapshot, macro, test, analysis and docs paths): what the docs show besides the warehouse."""
    config = yaml.safe_load((project_dir / "dbt_project.yml").read_text()) or {}
    digest = hashlib.sha256((project_dir / "dbt_project.yml").read_bytes())
    for key in PROJECT_PATHS:
        for folder in config.get(key) or []:
            for path in sorted((project_dir / folder).rglob("*")):
                if path.is_file():
                    digest.update(str(path.relative_to(project_dir)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


CATALOG_QUERY = """
select c.table_schema, c.table_name, t.table_type, c.column_name, c.ordinal_position, c.data_type,
    c.character_maximum_length, c.numeric_precision, c.numeric_scale
from information_schema.columns as c
join information_schema.tables as t
    on c.table_catalog = t.table_catalog and c.table_schema = t.table_schema and c.table_name = t.table_name
where c.table_catalog = current_database() and lower(c.table_schema) in ({schemas})
order by 1, 2, 5
"""


def catalog_key(con: Any, target: str, manifest: Manifest) -> str | None:
    """A hash of the relations the docs show (the project's models, seeds and snapshots, and its
    sources), each with its kind and its columns' names, places and types: what dbt's docs catalog
    shows besides the project (on DuckDB and PostgreSQL it holds no row counts or other
    statistics). None on Spark, whose catalog carries table statistics."""
    if target == "spark":
        return None
    shown = {
        (str(n.schema).lower(), str(n.alias or n.name).lower())
        for n in manifest.nodes.values()
        if _recorded_kind(n) and n.resource_type != "test"
    } | {(str(s.schema).lower(), str(s.identifier or s.name).lower()) for s in manifest.sources.values()}
    schemas = sorted({schema for schema, _ in shown})  # not the readers' copies nor dlt's staging datasets
    if not schemas:
        return hashlib.sha256(b"[]").hexdigest()
    query = CATALOG_QUERY.format(schemas=", ".join("?" for _ in schemas))
    rows = [r for r in con.execute(query, schemas).fetchall() if (str(r[0]).lower(), str(r[1]).lower()) in shown]
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def fingerprints(con: Any, manifest: Manifest, datasets: Iterable[str]) -> dict[str, str | None]:
    """Each dbt source table's fingerprint, by source unique id: ``<rows>:<newest load id>`` for a
    table dlt loads (in one of ``datasets``); None for any other (the run ledger, a table kept by
    something else), which counts as changed every night, and for one that does not exist."""
    loaded = set(datasets)
    existing: dict[str, set[str]] = {}
    prints: dict[str, str | None] = {}
    parts: list[str] = []
    ids: list[str] = []
    for unique_id, source in sorted(manifest.sources.items()):
        prints[unique_id] = None
        schema, name = source.schema, source.identifier or source.name
        if schema not in loaded:
            continue
        if schema not in existing:
            existing[schema] = {t.lower() for t in table_names(con, schema)}
        if name.lower() not in existing[schema]:
            continue
        ids.append(unique_id)
        parts.append(f'select {len(parts)} as i, count(*) as n, max(_dlt_load_id) as l from "{schema}"."{name}"')
    if not parts:
        return prints
    try:  # one statement for every table (on Spark, one job)
        found = con.execute(" union all ".join(parts)).fetchall()
    except Exception:  # a table without dlt's load id: the others one by one, it counts as changed
        log.warning("the raw tables' fingerprints could not be read at once; reading them one by one", exc_info=True)
        found = []
        for part in parts:
            try:
                found += con.execute(part).fetchall()
            except Exception as exc:
                log.warning("no fingerprint for %s (built every night): %s", part.rsplit(" from ", 1)[-1], exc)
    for i, rows, newest in found:
        prints[ids[int(i)]] = f"{int(rows)}:{newest or ''}"
    return prints


@dataclass
class Selection:
    """What tonight's build selects, and why."""

    select: list[str]
    """dbt's ``--select`` (empty: every node)."""
    state: Path | None
    """dbt's ``--state`` (the saved manifest), when ``select`` uses ``state:modified``."""
    full: bool
    """Every node is built (no state, asked for, or the weekly full night is due)."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Per unique id of a node chosen for itself (not as a descendant): why."""
    idle: bool = False
    """Nothing is to be built: no ``dbt build`` runs (``select`` is empty then, not everything)."""


def select(
    manifest: Manifest,
    state: BuildState,
    prints: dict[str, str | None],
    relations: Callable[[], dict[str, set[str]]],
    full: bool = False,
    full_every: timedelta | None = None,
    now: datetime | None = None,
    project: str | None = None,
) -> Selection:
    """Tonight's selection (see the module's description). ``relations``: reads the relations
    the warehouse holds, by schema (lower case), when a node's record is to be checked.
    ``full_every``: a night builds every node when the last full one is older. ``project``:
    tonight's :func:`project_key` (None: unknown, ``state:modified`` may select something)."""
    now = now or datetime.now(UTC)
    due = full_every is not None and (state.full_at is None or now - state.full_at >= full_every)
    if full or due or state.manifest is None:
        return Selection(select=[], state=None, full=True)
    existing = relations()
    upstream = _upstream_sources(manifest)
    reasons: dict[str, str] = {}
    bookkeeping: dict[str, str] = {}  # chosen for new rows in the run ledger only
    for unique_id, node in manifest.nodes.items():
        if not _recorded_kind(node):
            continue
        record = state.nodes.get(unique_id)
        if EVERY_NIGHT in (node.tags or []):
            reasons[unique_id] = f"tagged {EVERY_NIGHT}"
        elif record is None:
            reasons[unique_id] = "not built since it last failed, was skipped, or was added"
        elif node.resource_type != "test" and (node.alias or node.name).lower() not in existing.get(
            node.schema.lower(), set()
        ):
            reasons[unique_id] = "its relation is missing from the warehouse"
        else:
            changed = sorted(s for s in upstream[unique_id] if prints.get(s) is None or record.get(s) != prints[s])
            if changed:
                why = "new data in " + ", ".join(_source_name(manifest, s) for s in changed)
                ledger_only = all(manifest.sources[s].schema == LEDGER for s in changed)
                (bookkeeping if ledger_only else reasons)[unique_id] = why
    if not reasons and project is not None and project == state.manifest_key:
        return Selection(select=[], state=None, full=False, idle=True)
    reasons |= bookkeeping
    chosen = [f"fqn:{'.'.join(manifest.nodes[u].fqn)}+" for u in sorted(reasons)]
    return Selection(select=[*chosen, "state:modified+"], state=state.manifest, full=False, reasons=reasons)


def _recorded_kind(node: Any) -> bool:
    kind = str(node.resource_type)
    return kind in KINDS and not (kind == "model" and node.config.materialized == "ephemeral")


def _source_name(manifest: Manifest, unique_id: str) -> str:
    source = manifest.sources[unique_id]
    return f"{source.source_name}.{source.name}"


def _upstream_sources(manifest: Manifest) -> dict[str, set[str]]:
    """Per node, the source tables it reads, directly or through other nodes."""
    parents = manifest.parent_map or {}
    memo: dict[str, set[str]] = {}

    def walk(unique_id: str) -> set[str]:
        if unique_id in memo:
            return memo[unique_id]
        memo[unique_id] = found = set()
        for parent in parents.get(unique_id, []):
            if parent in manifest.sources:
                found.add(parent)
            else:
                found |= walk(parent)
        return found

    return {unique_id: walk(unique_id) for unique_id in manifest.nodes}


def record(
    manifest: Manifest,
    state: BuildState,
    prints: dict[str, str | None],
    results: Iterable[tuple[str, str]],
    left_out: Iterable[str] = (),
) -> BuildState:
    """The state after tonight's build: each node that ran (unique id, status) recorded with the
    fingerprints it was built from when it succeeded, forgotten otherwise; nodes ``left_out``
    (their source failed tonight) forgotten too, so that the next night builds them; nodes no
    longer in the project dropped."""
    upstream = _upstream_sources(manifest)
    nodes = {u: r for u, r in state.nodes.items() if u in manifest.nodes}
    for unique_id, status in results:
        if unique_id not in manifest.nodes or not _recorded_kind(manifest.nodes[unique_id]):
            continue
        if status in BUILT:
            nodes[unique_id] = {s: prints.get(s) for s in sorted(upstream[unique_id])}
        else:
            nodes.pop(unique_id, None)
    for unique_id in left_out:
        nodes.pop(unique_id, None)
    return replace(state, nodes=nodes)


def unchanged(manifest: Manifest, state: BuildState, ran: set[str], left_out: set[str]) -> list[str]:
    """The nodes tonight left as they were, having built them successfully before, and the unit
    tests of the models among them (reported as :data:`UNCHANGED`)."""
    kept = {
        u
        for u, node in manifest.nodes.items()
        if _recorded_kind(node) and u in state.nodes and u not in ran and u not in left_out
    }
    tests = {
        u
        for u, test in manifest.unit_tests.items()
        if u not in ran and test.depends_on.nodes and set(test.depends_on.nodes) <= kept
    }
    return sorted(kept | tests)
