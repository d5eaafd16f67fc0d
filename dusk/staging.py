"""``dusk generate staging <source>``: the staging layer of a source's tables that have none,
written the way the project's own staging models are.

For each such table:

- ``base_<source>__<table>.sql`` selects raw's columns (the file a row came from as
  ``source_file``, dlt's load id as ``dlt_load_id``) and marks every row that breaks a validity
  rule with a ``quarantine_reason`` (to begin with: an empty key, ``missing_key``; add your rules
  to its ``case``);
- ``stg_<source>__<table>.sql`` holds the rows without a reason;
- ``quarantine_<source>.sql`` holds the rows with one, from every table of the source;
- ``_<source>__models.yml`` documents the three, the key as tests on the staging model;
- dbt's source entry of the table gets the reconciliation test (raw = staged + quarantined: no
  row is lost between raw and staging) beside the tests generated from ``sources.yml``.

The columns are the declared ones; else raw's (once a night has loaded the table); else, for a
files source, those its newest landing file gives (typed as the first load will type them); else,
for a database, the source table's. A file that exists is never overwritten: a table with a base
or staging model of its own is left alone, and new entries are added to an existing models file
without touching the rest.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from dusk.generate import STAGING, flow, path_of, render, round_trip_yaml
from dusk.settings import PROJECT_DIR
from ingestion.declaration import SourceSpec, TableSpec

INTERNAL = frozenset({"_dlt_load_id", "_dlt_id", "_line", "_file_order", "_stream_seq", "_file", "_source_file"})
"""Raw's columns that the loaders add: the base model names the ones it keeps itself."""
_KEYWORDS = """
    all and any array as asc between by case cast check column create cross current date default
    delete desc distinct drop else end except exists false fetch for foreign from full group having
    in inner insert interval intersect into is join key lateral left like limit natural not null of
    offset on or order outer over partition primary range references right row rows select
    session_user table then time timestamp to true union unique user using values when where window
    with
"""
RESERVED = frozenset(_KEYWORDS.split())
"""Column names a model must quote (SQL keywords of the engines dusk runs on)."""


class NoColumns(RuntimeError):
    """A table whose columns are not known yet."""


@dataclass
class Staged:
    """What ``dusk generate staging`` did for one source."""

    written: list[Path] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Tables left alone: they have a base or staging model already."""
    notes: list[str] = field(default_factory=list)


Columns = Callable[[TableSpec], list[str]]
"""The columns of a table as raw holds (or will hold) them, dusk's own excluded."""


def generate_staging(spec: SourceSpec, columns: Columns, project_dir: Path = PROJECT_DIR) -> Staged:
    """Write the staging layer of ``spec``'s tables that have none."""
    folder = project_dir / STAGING / spec.name
    done = Staged()
    todo: list[tuple[TableSpec, list[str]]] = []
    for table in spec.tables:
        if (folder / f"base_{spec.name}__{table.name}.sql").exists() or (
            folder / f"stg_{spec.name}__{table.name}.sql"
        ).exists():
            done.kept.append(table.name)
            continue
        todo.append((table, [c for c in columns(table) if c not in INTERNAL]))
    if not todo:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    files = spec.kind == "files"
    for table, names in todo:
        for path, text in (
            (folder / f"base_{spec.name}__{table.name}.sql", base_sql(spec, table, names)),
            (folder / f"stg_{spec.name}__{table.name}.sql", stg_sql(spec, table, names)),
        ):
            path.write_text(text)
            done.written.append(path)
    quarantine = folder / f"quarantine_{spec.name}.sql"
    new_quarantine = not quarantine.exists()
    if not new_quarantine:
        done.notes.append(
            f"{quarantine.relative_to(project_dir)} exists and was left as it is: add "
            + ", ".join(f"base_{spec.name}__{t.name}" for t, _ in todo)
            + " to it"
        )
    else:
        quarantine.write_text(quarantine_sql(spec, [t for t, _ in todo], files))
        done.written.append(quarantine)
    models = folder / f"_{spec.name}__models.yml"
    models.write_text(models_yml(spec, todo, models.read_text() if models.exists() else "", new_quarantine))
    done.written.append(models)
    sources = path_of(spec.name, project_dir)
    sources.parent.mkdir(parents=True, exist_ok=True)
    text = render(spec, sources.read_text() if sources.exists() else "")
    sources.write_text(render(spec, with_reconciliation(text, spec, [t for t, _ in todo])))
    done.written.append(sources)
    return done


def _q(name: str) -> str:
    return f"{{{{ adapter.quote('{name}') }}}}" if name.lower() in RESERVED else name


def _key_sql(table: TableSpec) -> str:
    """The row's key as text: ``k`` or ``k1 || '/' || k2``."""
    if not table.key_columns:
        return "cast(null as {{ dbt.type_string() }})"
    if len(table.key_columns) == 1:
        return f"cast({_q(table.key_columns[0])} as {{{{ dbt.type_string() }}}})"
    parts = [f"coalesce(cast({_q(k)} as {{{{ dbt.type_string() }}}}), '')" for k in table.key_columns]
    return "\n        || '/'\n        || ".join(parts)


def base_sql(spec: SourceSpec, table: TableSpec, names: list[str]) -> str:
    keys = [k for k in table.key_columns if k in names] or table.key_columns
    ordered = [*keys, *(n for n in names if n not in keys)]
    renamed = [f"        {_q(n)}," for n in ordered]
    if spec.kind == "files":
        renamed.append("        {{ file_column() }} as source_file,")
    renamed.append("        _dlt_load_id as dlt_load_id")
    kept = [f"        {_q(n)}," for n in ordered] + (["        source_file,"] if spec.kind == "files" else [])
    if table.key_columns:
        missing = " or ".join(f"{_q(k)} is null" for k in table.key_columns)
        reason = [
            "        case",
            f"            when {missing} then 'missing_key'",
            "        end as quarantine_reason,",
        ]
    else:
        reason = ["        cast(null as {{ dbt.type_string() }}) as quarantine_reason,"]
    return (
        "{#\n"
        f"    Rows of raw {spec.dataset}.{table.name}, checked: a row that breaks a validity rule carries\n"
        "    the first rule it breaks in quarantine_reason (staging leaves it out, quarantine keeps it).\n"
        "    Generated by `dusk generate staging`; yours to edit (add rules to the case).\n"
        "#}\n"
        "with\n\n"
        "source as (\n\n"
        f"    select * from {{{{ source('{spec.name}', '{table.name}') }}}}\n\n"
        "),\n\n"
        "renamed as (\n\n"
        "    select\n" + "\n".join(renamed) + "\n    from source\n\n"
        "),\n\n"
        "final as (\n\n"
        "    select\n" + "\n".join(kept + reason) + "\n        dlt_load_id\n    from renamed\n\n"
        ")\n\n"
        "select * from final\n"
    )


def stg_sql(spec: SourceSpec, table: TableSpec, names: list[str]) -> str:
    keys = [k for k in table.key_columns if k in names] or table.key_columns
    ordered = [*keys, *(n for n in names if n not in keys)]
    columns = [f"        {_q(n)}," for n in ordered] + (["        source_file,"] if spec.kind == "files" else [])
    return (
        "with\n\n"
        "base as (\n\n"
        f"    select * from {{{{ ref('base_{spec.name}__{table.name}') }}}}\n\n"
        "),\n\n"
        "final as (\n\n"
        "    select\n" + "\n".join(columns) + "\n        dlt_load_id\n    from base\n"
        "    where quarantine_reason is null\n\n"
        ")\n\n"
        "select * from final\n"
    )


def quarantine_sql(spec: SourceSpec, tables: list[TableSpec], files: bool) -> str:
    parts = []
    for table in tables:
        lines = [
            f"        '{table.name}' as table_name,",
            f"        {_key_sql(table)} as record_key,",
            *(["        source_file,"] if files else []),
            "        quarantine_reason,",
            "        dlt_load_id",
        ]
        parts.append(
            f"{table.name} as (\n\n    select\n"
            + "\n".join(lines)
            + f"\n    from {{{{ ref('base_{spec.name}__{table.name}') }}}}\n"
            "    where quarantine_reason is not null\n\n)"
        )
    union = "\n    union all\n".join(f"    select * from {t.name}" for t in tables)
    return (
        "{#\n"
        f"    Rows of source {spec.name} that broke a validity rule (see its base models): they stay out\n"
        "    of staging until fixed at the source (or the rule changes), then flow on at the next run.\n"
        "#}\n"
        "with\n\n" + ",\n\n".join(parts) + ",\n\nfinal as (\n\n" + union + "\n\n)\n\nselect * from final\n"
    )


def models_yml(spec: SourceSpec, todo: list[tuple[TableSpec, list[str]]], existing: str, quarantine: bool) -> str:
    """``existing`` (a models file, or nothing) with entries for the new models added."""
    y = round_trip_yaml()
    doc = y.load(existing) if existing.strip() else None
    if not isinstance(doc, CommentedMap):
        doc = CommentedMap(version=2)
    models = doc.get("models")
    if not isinstance(models, CommentedSeq):
        models = doc["models"] = CommentedSeq()
    have = {m.get("name") for m in models if isinstance(m, dict)}

    def load_id() -> CommentedMap:
        return CommentedMap(name="dlt_load_id", description="{{ doc('dlt_load_id') }}")

    def extra() -> list[CommentedMap]:
        file = CommentedMap(name="source_file", description="The landing file the row came from.")
        return [file] if spec.kind == "files" else []

    for table, names in todo:
        key = table.key_columns
        per_row = f"one row per {' and '.join(key)}" if key else "rows as loaded (no key declared)"
        stg = CommentedMap(name=f"stg_{spec.name}__{table.name}")
        stg["description"] = (
            f"{table.name} of source {spec.name} ({spec.description.rstrip('.') or spec.kind}), {per_row}; "
            f"rows that break a rule are in quarantine_{spec.name}."
        )
        if len(key) > 1:
            stg["data_tests"] = CommentedSeq(
                [CommentedMap(unique_combination=CommentedMap(arguments=CommentedMap(columns=flow(list(key)))))]
            )
        columns = CommentedSeq()
        for name in [*key, *(n for n in names if n not in key)]:
            column = CommentedMap(name=name)
            if name in key:
                column["data_tests"] = flow(["unique", "not_null"] if len(key) == 1 else ["not_null"])
            columns.append(column)
        stg["columns"] = CommentedSeq([*columns, *extra(), load_id()])
        base = CommentedMap(name=f"base_{spec.name}__{table.name}")
        base["description"] = (
            f"Rows of raw {spec.dataset}.{table.name}, checked; invalid rows carry a quarantine_reason."
        )
        reason = CommentedMap(name="quarantine_reason")
        reason["description"] = (
            "The first rule the row breaks, or null: missing_key." if key else "The first rule the row breaks, or null."
        )
        base["columns"] = CommentedSeq([reason])
        for model in (stg, base):
            if model["name"] not in have:
                models.append(model)
    name = f"quarantine_{spec.name}"
    if quarantine and name not in have:
        entry = CommentedMap(name=name)
        entry["description"] = (
            f"Rows of source {spec.name} that broke a validity rule, with the rule (see the base models)."
        )
        entry["columns"] = CommentedSeq(
            [
                CommentedMap(name="table_name", description="The raw table of the row.", data_tests=flow(["not_null"])),
                CommentedMap(name="record_key", description="The row's key as text (key columns joined by /)."),
                *extra(),
                CommentedMap(
                    name="quarantine_reason", description="The rule the row breaks.", data_tests=flow(["not_null"])
                ),
                load_id(),
            ]
        )
        models.append(entry)
    out = io.StringIO()
    y.dump(doc, out)
    return out.getvalue()


def with_reconciliation(text: str, spec: SourceSpec, tables: list[TableSpec]) -> str:
    """dbt's source file of ``spec`` with a ``rowcount_reconciles`` test on each of ``tables``
    that has none: raw = staged + quarantined."""
    y = round_trip_yaml()
    doc = y.load(text)
    (source,) = [s for s in doc["sources"] if s.get("name") == spec.name]
    names = {t.name for t in tables}
    for table in source.get("tables") or []:
        if table.get("name") not in names:
            continue
        tests = table.get("data_tests")
        if not isinstance(tests, CommentedSeq):
            tests = table["data_tests"] = CommentedSeq()
        if any(isinstance(t, dict) and "rowcount_reconciles" in t for t in tests):
            continue
        quarantined = CommentedMap(relation=f"{{{{ ref('quarantine_{spec.name}') }}}}")
        quarantined["where"] = f"table_name = '{table['name']}'"
        arguments = CommentedMap(
            name=f"reconcile_{spec.dataset}__{table['name']}",
            arguments=CommentedMap(
                parts=CommentedSeq(
                    [CommentedMap(relation=f"{{{{ ref('stg_{spec.name}__{table['name']}') }}}}"), quarantined]
                )
            ),
        )
        tests.append(CommentedMap(rowcount_reconciles=arguments))
    out = io.StringIO()
    y.dump(doc, out)
    return out.getvalue()


def known_columns(spec: SourceSpec, raw: Callable[[str], list[str]], landing: Path | None, url: str | None) -> Columns:
    """Where a table's columns come from, in order: the declaration (files and streams that
    declare them), ``raw`` (the columns a night loaded), the newest landing file of a files
    source, the source table of a database (``url``); :class:`NoColumns` otherwise."""

    def columns(table: TableSpec) -> list[str]:
        if spec.kind in ("files", "stream") and not table.inferred:
            return [n for n, _ in table.columns]
        loaded = raw(table.name)
        if loaded:
            return loaded
        if spec.kind == "files" and landing is not None:
            found = _from_landing(table, landing)
            if found:
                return found
        if spec.kind == "database" and url:
            return _from_database(table, url)
        raise NoColumns(
            f"source {spec.name!r}, table {table.name!r}: its columns are not known yet (not declared, not in raw"
            f"{', no landing file matches ' + repr(table.pattern) if spec.kind == 'files' else ''}): run `dusk run` "
            f"once, then `dusk generate staging {spec.name}` again"
        )

    return columns


def _normalized(names: list[str]) -> list[str]:
    """Column names as dlt writes them to raw (snake_case)."""
    from dlt.common.normalizers.naming.snake_case import NamingConvention

    naming = NamingConvention()
    return [naming.normalize_identifier(n) for n in names]


def _from_landing(table: TableSpec, landing: Path) -> list[str]:
    """The columns the first load will give ``table``: its newest matching file, read and typed
    as ingestion reads it."""
    import duckdb

    from ingestion.files.landing import ARCHIVE, in_flight
    from ingestion.files.parse import FileError, parse
    from ingestion.infer import evolve

    candidates = [
        p for f in (landing, landing / ARCHIVE) for p in f.glob(table.pattern) if p.is_file() and not in_flight(p)
    ]
    if not candidates:
        return []
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    try:
        records, _ = parse(newest, table)
    except FileError:
        return []
    with duckdb.connect() as con:
        parquet = newest if newest.name.lower().endswith(".parquet") else None
        typed, _ = evolve(con, table, records, f"file {newest.name}", parquet)
    return _normalized([n for n, _ in typed.columns])


def _from_database(table: TableSpec, url: str) -> list[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        found = sa.inspect(engine).get_columns(table.name, schema=table.schema or None)
    finally:
        engine.dispose()
    return _normalized([str(c["name"]) for c in found if c["name"] not in table.exclude_columns])
