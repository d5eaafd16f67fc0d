"""``dusk generate``: dbt's source definitions written from ``ingestion/sources.yml``, their one
declaration.

Each source gets ``models/staging/<source>/_<source>__sources.yml``. The generator owns, and
rewrites every time, what the declaration says:

- the source's ``name``, ``schema`` (the dlt dataset ``raw_<source>``), ``loader`` and
  ``meta.kind``; its freshness query (``config.loaded_at_query``) when none is set;
- its tables, in the declared order (a table no longer declared is removed), each with
  ``meta`` (primary key, cursor, write disposition, deletes: how dusk loads it);
- the key as tests: ``unique`` and ``not_null`` on a one-column key, ``unique_combination`` on a
  composite key and ``not_null`` on each of its columns;
- each declared column's ``data_type`` (files, streams, APIs, and a database's overrides).

Everything else in the file is yours and is kept as it is, comments included: descriptions,
other tests, docs blocks, tags (``pii``), config. A description the file lacks is taken from
``sources.yml``. The file is rewritten only when its content would change.

The runner regenerates the files that are stale before every night (:func:`write`); CI fails
when a committed file is stale (``dusk generate --check``, and the tests).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from dusk.settings import PROJECT_DIR
from ingestion.declaration import SourceSpec, TableSpec

STAGING = Path("models") / "staging"
HEADER = (
    "# Generated from ingestion/sources.yml by `dusk generate` (a night regenerates it when stale).\n"
    "# Rewritten from the declaration: name, schema, loader, meta, the tables, their key tests and\n"
    "# the declared columns' data_type. Everything else here is yours and is kept: descriptions,\n"
    "# other tests, tags (pii), config.\n"
)
LOADED_AT = "{{ extracted_at() }}"
"""Freshness: when dusk last read the source successfully (macros/freshness.sql)."""


@dataclass(frozen=True)
class Generated:
    """One source's file: where, and its text as it should be."""

    path: Path
    text: str
    current: bool
    """The file on disk already holds ``text``."""


def round_trip_yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096  # never fold a line the user wrote
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def path_of(name: str, project_dir: Path = PROJECT_DIR) -> Path:
    """``models/staging/<source>/_<source>__sources.yml``."""
    return project_dir / STAGING / name / f"_{name}__sources.yml"


def generate(specs: dict[str, SourceSpec], project_dir: Path = PROJECT_DIR) -> list[Generated]:
    """Every declared source's file as it should be (nothing is written)."""
    out = []
    for name, spec in specs.items():
        path = path_of(name, project_dir)
        existing = path.read_text() if path.exists() else ""
        text = render(spec, existing)
        out.append(Generated(path=path, text=text, current=text == existing))
    return out


def stray(specs: dict[str, SourceSpec], project_dir: Path = PROJECT_DIR) -> list[Path]:
    """Source files of sources ``sources.yml`` no longer declares (never removed by the
    generator: the models beside them are yours)."""
    return [p for p in sorted((project_dir / STAGING).glob("*/_*__sources.yml")) if p.parent.name not in specs]


def write(specs: dict[str, SourceSpec], project_dir: Path = PROJECT_DIR) -> list[Path]:
    """Rewrite the files that are stale; the paths written."""
    written = []
    for each in generate(specs, project_dir):
        if not each.current:
            each.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = each.path.with_name(f".{each.path.name}.tmp")
            tmp.write_text(each.text)
            tmp.replace(each.path)
            written.append(each.path)
    return written


def render(spec: SourceSpec, existing: str = "") -> str:
    """The file of ``spec``, keeping what ``existing`` holds beyond what the declaration owns."""
    y = round_trip_yaml()
    doc = y.load(existing) if existing.strip() else None
    if not isinstance(doc, CommentedMap):
        doc = CommentedMap()
    doc["version"] = 2
    found = doc.get("sources")
    sources = found if isinstance(found, CommentedSeq) else CommentedSeq()
    mine = next((s for s in sources if isinstance(s, CommentedMap) and s.get("name") == spec.name), None)
    source = _source(spec, mine if mine is not None else CommentedMap())
    doc["sources"] = CommentedSeq([source])
    out = io.StringIO()
    y.dump(doc, out)
    body = out.getvalue()
    lines = body.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):  # the header is ours: written once, first
        lines.pop(0)
    return HEADER + "".join(lines).lstrip("\n").replace("version: 2\n", "version: 2\n\n", 1).replace(
        "version: 2\n\n\n", "version: 2\n\n"
    )


def _source(spec: SourceSpec, source: CommentedMap) -> CommentedMap:
    fresh = CommentedMap()
    fresh["name"] = spec.name
    fresh["schema"] = spec.dataset
    fresh["loader"] = "dlt"
    fresh["description"] = source.get("description") or spec.description
    fresh["meta"] = _merged(source.get("meta"), {"kind": spec.kind})
    config = source.get("config") if isinstance(source.get("config"), CommentedMap) else CommentedMap()
    if "loaded_at_query" not in config and "loaded_at_field" not in config:
        config["loaded_at_query"] = LOADED_AT
    fresh["config"] = config
    for key, value in source.items():  # what else the user wrote, in their order
        if key not in fresh and key != "tables":
            fresh[key] = value
    before = {t.get("name"): t for t in source.get("tables") or [] if isinstance(t, CommentedMap)}
    fresh["tables"] = CommentedSeq([_table(t, before.get(t.name, CommentedMap())) for t in spec.tables])
    return _keep_comments(source, fresh)


def _table(spec: TableSpec, table: CommentedMap) -> CommentedMap:
    fresh = CommentedMap()
    fresh["name"] = spec.name
    for key, value in table.items():
        if key not in ("name", "meta", "columns", "data_tests"):
            fresh[key] = value
    loaded = {
        "primary_key": list(spec.primary_key),
        "cursor": spec.cursor,
        "write_disposition": spec.write_disposition,
        "deletes": spec.deletes,
    }
    fresh["meta"] = _merged(table.get("meta"), {k: v for k, v in loaded.items() if v not in (None, [], "")})
    tests = CommentedSeq(list(table.get("data_tests") or []))
    if len(spec.primary_key) > 1:
        combination = next((t for t in tests if isinstance(t, dict) and "unique_combination" in t), None)
        wanted = CommentedMap(arguments=CommentedMap(columns=flow(list(spec.primary_key))))
        if combination is None:
            tests.insert(0, CommentedMap(unique_combination=wanted))
        else:
            combination["unique_combination"] = wanted
    if tests:
        fresh["data_tests"] = tests
    columns = {c.get("name"): c for c in table.get("columns") or [] if isinstance(c, CommentedMap)}
    declared = dict(spec.columns)
    for name in [*spec.primary_key, *declared]:
        columns.setdefault(name, CommentedMap(name=name))
    for name, column in columns.items():
        if name in declared:
            column["data_type"] = declared[name]
        if name in spec.primary_key:
            wanted_tests = ["unique", "not_null"] if len(spec.primary_key) == 1 else ["not_null"]
            have = list(column.get("data_tests") or [])
            names = {t if isinstance(t, str) else next(iter(t)) for t in have}
            column["data_tests"] = flow(have + [t for t in wanted_tests if t not in names])
    fresh["columns"] = CommentedSeq(list(columns.values()))
    return _keep_comments(table, fresh)


def _merged(found: Any, ours: dict[str, Any]) -> CommentedMap:
    meta = CommentedMap(found) if isinstance(found, dict) else CommentedMap()
    for key, value in ours.items():
        meta[key] = flow(value) if isinstance(value, list) else value
    return meta


def flow(items: list[Any]) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def _keep_comments(old: CommentedMap, new: CommentedMap) -> CommentedMap:
    """The comments attached to ``old``'s keys, on the same keys of ``new``."""
    for key, comment in (old.ca.items or {}).items():
        if key in new:
            new.ca.items[key] = comment
    return new
