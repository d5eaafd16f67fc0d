"""Forget a person (``dusk erase``): a GDPR/CCPA erasure request served in every copy dusk keeps.

A subject is named by a source table and values of its columns (its primary key, or e.g. an
e-mail column); dusk finds the subject's primary keys in raw and removes their rows:

- **raw**: the table's rows, and the source's dead letters (file rows, stream messages) of them;
- **snapshots** built from the table: every version of the subject (history no source can give
  back: deleted, never rebuilt). A snapshot whose ``unique_key`` is not the table's key is refused
  before anything changes, since its versions of the subject cannot be told apart;
- **everything else downstream** (staging, intermediate, marts, incremental and microbatch ones
  too) is rebuilt from raw by ``dbt run --full-refresh``, so it equals a rebuild; the stored
  failing rows of the tests downstream are dropped (the next night stores them again);
- **the served copy** readers use: the subject's rows of every served relation downstream of the
  table that has the key's columns, in tonight's copy and in the earlier nights' copies a server
  engine keeps for readers still reading them (its rows of other tables that only reference the
  key, such as orders, stay there until the next night publishes);
- **physically**: DuckDB keeps deleted rows in the file's blocks, so the warehouse and the served
  file are rewritten whole (``COPY FROM DATABASE``); PostgreSQL's touched tables get ``VACUUM
  FULL``; Iceberg's touched and rebuilt tables have their older snapshots expired (their data
  files deleted); dlt's completed load packages of the source (which hold the rows as loaded)
  are removed.

The ledger's ``erasures`` table records each subject by the salted hash of its key, when, and
where its rows were. The source system is the user's to erase: a database row that is still
there comes back with the next full read.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
from dbt.cli.main import dbtRunner
from dbt.contracts.graph.manifest import Manifest

from dusk.record import format_run_id
from dusk.settings import Settings
from dusk.steps.build import dbt_args, parse
from dusk.warehouse import LEDGER, Connection, Warehouse, open_warehouse, read_salt, table_names
from ingestion import replay
from ingestion.declaration import SourceSpec, TableSpec
from ingestion.run import make_pipeline

_KEY_CHUNK = 200
"""Keys per DELETE statement."""


class EraseRefused(RuntimeError):
    """Nothing was erased; the message says why and what to do."""


class EraseIncomplete(RuntimeError):
    """Part of the erasure is done and recorded; the message says what is left and how to finish."""


@dataclass
class Erased:
    """What one erasure removed."""

    erase_id: str
    keys: list[tuple[Any, ...]] = field(default_factory=list)
    not_found: list[dict[str, str]] = field(default_factory=list)
    scope: Counter[str] = field(default_factory=Counter)
    """Relation (or what else) -> rows removed."""
    rebuilt: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    again: list[str] = field(default_factory=list)
    """Subjects erased before, whose copies were erased again."""


def subjects_from(pairs: list[str], batch: Path | None) -> list[dict[str, str]]:
    """The subjects named on the command line: ``--key col=value`` (repeated for a composite key:
    one subject), or a CSV file whose header names the columns, a subject per line."""
    subjects: list[dict[str, str]] = []
    if pairs:
        subject = {}
        for pair in pairs:
            column, sep, value = pair.partition("=")
            if not sep or not column.strip():
                raise EraseRefused(f"--key {pair!r}: expected column=value, e.g. --key customer_id=42")
            subject[column.strip()] = value
        subjects.append(subject)
    if batch is not None:
        with batch.open(newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.DictReader(f), start=2):
                if any(v is None or k is None for k, v in row.items()):
                    raise EraseRefused(f"{batch}, line {number}: expected one value per column of the header")
                subjects.append(dict(row))
    if not subjects:
        raise EraseRefused("name the subject: --key column=value (repeat for a composite key), or --keys file.csv")
    return subjects


def key_hash(salt: str, key: tuple[Any, ...]) -> str:
    """The salted SHA-256 the ledger records a subject's key by (never the key itself)."""
    return hashlib.sha256("|".join([salt, *(str(v) for v in key)]).encode()).hexdigest()


def erase(settings: Settings, spec: SourceSpec, table_name: str, subjects: list[dict[str, str]]) -> Erased:
    """Erase the subjects' rows of ``spec``'s table ``table_name`` everywhere dusk keeps them
    (the module's docstring lists where). Run under the run lock."""
    warehouse = open_warehouse(settings)
    table = _table(spec, table_name)
    target = warehouse.target()
    if make_pipeline(spec, target).has_pending_data:
        raise EraseRefused(
            f"a killed run left data of source {spec.name!r} waiting to be loaded: run the night first (dusk run), "
            "then erase"
        )
    manifest, error = parse(settings)
    if manifest is None:
        raise EraseRefused(f"{error}: nothing was erased")
    downstream = _downstream(manifest, spec, table)
    snapshots = [manifest.nodes[u] for u in downstream if u.startswith("snapshot.")]
    for snapshot in snapshots:
        unique = snapshot.config.get("unique_key")
        unique = [unique] if isinstance(unique, str) else list(unique or [])
        if {u.strip() for u in unique} != set(table.key_columns):
            raise EraseRefused(
                f"snapshot {snapshot.name} is built from {spec.name}.{table.name} but keyed by {unique}, not by its "
                f"primary key {list(table.key_columns)}: the subject's versions cannot be told apart. Nothing was "
                "erased; erase them from the snapshot by hand, or key it by the table's key"
            )
    erased = Erased(format_run_id(datetime.now(UTC)))
    salt = read_salt(settings)
    raw: Relation = (spec.dataset, table.name)
    touched: list[Relation] = [raw]
    with warehouse.connect() as con:
        erased.keys, erased.not_found = _resolve(con, _quoted(raw), table, subjects)
        erased.keys += _erased_before(con, table, erased.not_found, salt, erased)
        if not erased.keys:
            raise EraseRefused(
                f"no row of {spec.dataset}.{table.name} matches {erased.not_found}: nothing was erased (check the "
                "column names and values; values are compared as text)"
            )
        erased.scope[f"{spec.dataset}.{table.name}"] = _delete(con, _quoted(raw), table.key_columns, erased.keys)
        staging = f"{spec.dataset}_staging"  # dlt's merge keeps the last batch it merged there
        if table.name in table_names(con, staging):
            touched.append((staging, table.name))
            erased.scope[f"{staging}.{table.name}"] = _delete(con, _quoted(touched[-1]), table.key_columns, erased.keys)
        present = table_names(con, spec.dataset)
        dead = replay.erase(con, spec, present, table, erased.keys)
        if dead:
            erased.scope[f"{spec.dataset}.{replay.QUARANTINE}"] = dead
            touched += [(spec.dataset, t) for t in (replay.QUARANTINE, replay.REPLAYS) if t in present]
        for snapshot in snapshots:
            touched.append((snapshot.schema, snapshot.alias or snapshot.name))
            erased.scope[".".join(touched[-1])] = _delete(con, _quoted(touched[-1]), table.key_columns, erased.keys)
        for test in (manifest.nodes[u] for u in downstream if u.startswith("test.")):
            failures = test.alias or test.name
            if failures in table_names(con, test.schema):
                con.execute(f'drop table if exists "{test.schema}"."{failures}"{_PURGE[warehouse.engine]}')
                erased.scope[f"{test.schema}.{failures} (stored test failures, dropped)"] += 1
        _purge(con, settings, warehouse.engine, touched)
        _record(con, erased, spec, table, salt)
    rebuilt = _rebuild(settings, spec, table, erased)
    try:
        if warehouse.engine == "spark":
            with warehouse.connect() as con:
                _purge(con, settings, "spark", rebuilt)  # Iceberg keeps a replaced table's old files
        _erase_served(settings, warehouse, manifest, downstream, table, erased)
        if warehouse.engine == "duckdb":
            _rewrite(settings.warehouse)
            erased.rewritten.append(str(settings.warehouse))
    except Exception as exc:  # a reader's lock past the limit, a full disk: the ledger allows a rerun
        raise EraseIncomplete(
            f"raw, the snapshots and the warehouse's models are erased and recorded, but the served copy or the "
            f"storage behind them is not clean yet ({exc}): run `dusk erase` again naming the subjects by their "
            f"primary key ({', '.join(table.key_columns)})"
        ) from exc
    packages = [p for p in (settings.pipelines_dir / spec.name / "load" / "loaded").glob("*") if p.is_dir()]
    for package in packages:
        shutil.rmtree(package)
    if packages:
        erased.scope[f"dlt load packages of {spec.name} (removed)"] = len(packages)
    return erased


def _table(spec: SourceSpec, name: str) -> TableSpec:
    declared = {t.name: t for t in spec.tables}
    if name not in declared:
        raise EraseRefused(f"source {spec.name!r} declares no table {name} (it has {', '.join(declared)})")
    table = declared[name]
    if not table.key_columns:
        raise EraseRefused(
            f"{spec.name}.{name} declares no primary_key: its rows of one subject cannot be told apart from others"
        )
    return table


def _downstream(manifest: Manifest, spec: SourceSpec, table: TableSpec) -> list[str]:
    """The unique ids of every node built from the source table, nearest first."""
    roots = [uid for uid, s in manifest.sources.items() if s.source_name == spec.name and s.name == table.name]
    if not roots:
        raise EraseRefused(f"dbt declares no source {spec.name}.{table.name}: nothing was erased")
    seen: list[str] = []
    todo = list(roots)
    while todo:
        for child in manifest.child_map.get(todo.pop(0), []):
            if child not in seen:
                seen.append(child)
                todo.append(child)
    return seen


def _resolve(
    con: Connection, relation: str, table: TableSpec, subjects: list[dict[str, str]]
) -> tuple[list[tuple[Any, ...]], list[dict[str, str]]]:
    """The primary keys of the raw rows each subject's values match (as text), and the subjects
    that match none."""
    keys: dict[tuple[Any, ...], None] = {}
    not_found = []
    columns = ", ".join(f'"{k}"' for k in table.key_columns)
    for subject in subjects:
        where = " and ".join(f'cast("{c}" as varchar) = ?' for c in subject)
        try:
            rows = con.execute(f"select {columns} from {relation} where {where}", list(subject.values())).fetchall()
        except Exception as exc:  # an engine's own error: a column that is not there
            raise EraseRefused(f"cannot look up {subject} in {relation}: {exc}") from None
        if not rows:
            not_found.append(subject)
        keys.update((tuple(row), None) for row in rows)
    return list(keys), not_found


def _erased_before(
    con: Connection, table: TableSpec, not_found: list[dict[str, str]], salt: str, erased: Erased
) -> list[tuple[Any, ...]]:
    """Subjects named by their primary key that raw no longer has but the ledger records as erased:
    an erasure that stopped half-way (or is checked) is run again over every copy. Their keys,
    removed from ``not_found``."""
    again = []
    for subject in list(not_found):
        if set(subject) != set(table.key_columns):
            continue
        key = tuple(subject[k] for k in table.key_columns)
        found = con.execute(
            f"select max(erased_at) from {LEDGER}.erasures where key_hash = ?", [key_hash(salt, key)]
        ).fetchone()
        if found and found[0] is not None:
            not_found.remove(subject)
            erased.again.append(f"{subject} (erased {found[0]:%Y-%m-%d %H:%M} UTC)")
            again.append(key)
    return again


def _delete(con: Connection, relation: str, columns: Sequence[str], keys: list[tuple[Any, ...]]) -> int:
    """Delete the rows of ``relation`` with one of ``keys``; how many there were."""
    one = "(" + " and ".join(f'"{c}" = ?' for c in columns) + ")"
    count = 0
    for start in range(0, len(keys), _KEY_CHUNK):
        chunk = keys[start : start + _KEY_CHUNK]
        where = " or ".join([one] * len(chunk))
        params = [v for key in chunk for v in key]
        (found,) = con.execute(f"select count(*) from {relation} where {where}", params).fetchone()
        if found:
            con.execute(f"delete from {relation} where {where}", params)
        count += int(found)
    return count


Relation = tuple[str, str]
"""(schema or namespace, table)."""

_PURGE = {"duckdb": "", "postgres": "", "spark": " purge"}
"""What makes a DROP TABLE remove the data files too (Iceberg keeps them otherwise)."""


def _quoted(relation: Relation) -> str:
    return f'"{relation[0]}"."{relation[1]}"'


def _purge(con: Any, settings: Settings, engine: str, relations: list[Relation]) -> None:
    """Make deleted rows unreadable in storage: PostgreSQL keeps them in the table's pages until
    VACUUM FULL rewrites it; Iceberg in the data files of the table's older snapshots, which
    ``expire_snapshots`` deletes (keeping only the current one). DuckDB's file is rewritten whole
    at the end instead."""
    if engine == "postgres":
        for relation in relations:
            con.execute(f"vacuum full {_quoted(relation)}")
    elif engine == "spark":
        until = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
        for schema, name in relations:
            con.sql(
                f"CALL {settings.spark.catalog_name}.system.expire_snapshots(table => '{schema}.{name}', "
                f"older_than => TIMESTAMP '{until}', retain_last => 1)"
            )


def _record(con: Connection, erased: Erased, spec: SourceSpec, table: TableSpec, salt: str) -> None:
    scope = ", ".join(f"{where}: {rows}" for where, rows in erased.scope.items())
    now = datetime.now(UTC).replace(tzinfo=None)
    con.executemany(
        f"insert into {LEDGER}.erasures (erase_id, erased_at, source, table_name, key_hash, scope) "
        "values (?, ?, ?, ?, ?, ?)",
        [[erased.erase_id, now, spec.name, table.name, key_hash(salt, key), scope] for key in erased.keys],
    )


def _rebuild(settings: Settings, spec: SourceSpec, table: TableSpec, erased: Erased) -> list[Relation]:
    """Everything downstream but the snapshots, rebuilt from raw (``dbt run`` builds no snapshot);
    the tables it rebuilt."""
    selector = f"source:{spec.name}.{table.name}+"
    done = dbtRunner().invoke(dbt_args(settings, "run", "--select", selector, "--full-refresh"))
    results = [r for r in getattr(done.result, "results", None) or [] if str(r.status) == "success"]
    erased.rebuilt = [r.node.name for r in results]
    if not done.success:
        raise EraseIncomplete(
            f"raw and the snapshots are erased and recorded, but rebuilding what {selector} feeds failed "
            f"({done.exception or 'see logs/dbt.log'}): fix it, then run `dusk erase` again naming the subjects by "
            f"their primary key ({', '.join(table.key_columns)}), which finishes the served copy and the files"
        )
    return [
        (r.node.schema, r.node.alias or r.node.name)
        for r in results
        if r.node.config.get("materialized") not in ("view", "ephemeral")
    ]


def _erase_served(
    settings: Settings,
    warehouse: Warehouse,
    manifest: Manifest,
    downstream: list[str],
    table: TableSpec,
    erased: Erased,
) -> None:
    """The subject's rows in readers' copy of every relation downstream that has the key's columns."""
    names = [
        (node.schema, node.alias or node.name)
        for node in (manifest.nodes[u] for u in downstream if u in manifest.nodes)
        if node.resource_type in ("model", "snapshot", "seed") and node.schema in settings.publish_schemas
    ]
    if warehouse.engine in ("postgres", "spark"):
        engine = warehouse.engine
        prefix = settings.postgres.served_prefix if engine == "postgres" else settings.spark.served_prefix
        with warehouse.connect() as con:
            if engine == "postgres":
                con.execute(f"set lock_timeout = {int(settings.postgres.lock_timeout * 1000)}")
            copies = _served_copies(con, engine, prefix)
            touched: list[Relation] = []
            for schema, name in names:
                # tonight's copy, and last nights' ones a reader may still hold (publish drops them later)
                for served in (c for c in copies if c == prefix + schema or c.startswith(f"{prefix}{schema}__")):
                    if name in table_names(con, served) and _has_columns(con, served, name, table.key_columns):
                        touched.append((served, name))
                        erased.scope[f"{served}.{name}"] += _delete(
                            con, _quoted(touched[-1]), table.key_columns, erased.keys
                        )
            _purge(con, settings, engine, touched)
        return
    served_path = settings.served_path
    if not served_path.exists():
        return
    copy = served_path.with_name(served_path.name + ".erase")
    copy.unlink(missing_ok=True)
    with duckdb.connect(str(copy)) as con:
        # readers may hold the served file open: it is copied, cleaned and renamed over it
        con.execute(f"attach '{served_path}' as dusk_readers (read_only)")
        con.execute(f"copy from database dusk_readers to {_alias(con)}")
        con.execute("detach dusk_readers")
        for schema, name in names:
            if name in table_names(con, schema) and _has_columns(con, schema, name, table.key_columns):
                relation = f'"{schema}"."{name}"'
                erased.scope[f"served {schema}.{name}"] += _delete(con, relation, table.key_columns, erased.keys)
    _rewrite(copy)
    os.replace(copy, served_path)
    erased.rewritten.append(str(served_path))


def _served_copies(con: Any, engine: str, prefix: str) -> list[str]:
    """The schemas (namespaces) whose names start with the served prefix."""
    if engine == "spark":
        names = [str(row[0]) for row in con.sql("show namespaces")]
    else:
        names = [str(row[0]) for row in con.execute("select nspname from pg_namespace").fetchall()]
    return [n for n in names if n.startswith(prefix)]


def _has_columns(con: Any, schema: str, name: str, columns: Sequence[str]) -> bool:
    if callable(getattr(con, "tables", None)):  # Spark: no information_schema
        rows = con.sql(f"describe table `{schema}`.`{name}`")
    else:
        rows = con.execute(
            "select column_name from information_schema.columns where table_schema = ? and table_name = ?",
            [schema, name],
        ).fetchall()
    return set(columns) <= {str(row[0]) for row in rows}


def _alias(con: duckdb.DuckDBPyConnection) -> str:
    (name,) = con.execute("select current_database()").fetchone() or ("",)
    return f'"{name}"'


def _rewrite(path: Path) -> None:
    """Copy a DuckDB file into a new one and put it in its place: a DELETE leaves the rows' bytes
    in the file's blocks, a copy holds only the live rows."""
    fresh = path.with_name(path.name + ".fresh")
    fresh.unlink(missing_ok=True)
    with duckdb.connect(str(path)) as con:
        con.execute(f"attach '{fresh}' as dusk_fresh")
        con.execute(f"copy from database {_alias(con)} to dusk_fresh")
        con.execute("detach dusk_fresh")
    os.replace(fresh, path)
    Path(str(path) + ".wal").unlink(missing_ok=True)
