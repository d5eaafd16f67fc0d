"""``dusk discover``: what a source holds, proposed as its ``sources.yml`` declaration.

- A **database** source is reflected with SQLAlchemy: every table of the schema, its primary key
  (composite keys included), its row count, and the columns that could serve as its cursor
  (timestamps and dates, those named like ``updated_at`` first). A table without a primary key
  is proposed commented out, saying why: dusk merges a database table on its key.
- A **files** source's landing folder is sniffed with DuckDB: files are grouped by their name
  with the digits taken out (``marketing_spend_2026-01-02.csv.gz`` -> ``marketing_spend_*.csv*``),
  and the newest file of each group gives the columns and their types. A number with a
  fractional part is proposed as ``decimal(p,s)`` wide enough for every value of that file,
  never ``double``: a float would round the amounts.

The proposal is printed, never written: it is a start to read, not a decision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import sqlalchemy as sa

CURSOR_NAMES = re.compile(r"(updated|modified|changed|last_?update|_ts$|timestamp)", re.IGNORECASE)
DUCK_TYPES = {
    "VARCHAR": "text",
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "SMALLINT": "integer",
    "TINYINT": "integer",
    "HUGEINT": "text",
    "BOOLEAN": "boolean",
    "DATE": "date",
    "TIMESTAMP": "timestamp",
    "TIMESTAMP WITH TIME ZONE": "timestamp",
    "JSON": "json",
}
FILE_KINDS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}


@dataclass
class Table:
    """What discovery found of one table (or one group of files)."""

    name: str
    rows: int | None = None
    primary_key: list[str] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    """Files only: each column's proposed declared type."""
    pattern: str = ""
    files: int = 0
    note: str = ""


def database(url: sa.URL, schema: str | None = None) -> list[Table]:
    """Every table of ``schema`` (default: the connection's) with its key, rows and cursor
    candidates."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        found = []
        with engine.connect() as con:
            for name in sorted(inspector.get_table_names(schema=schema)):
                key = list(inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or [])
                columns = inspector.get_columns(name, schema=schema)
                times = [c["name"] for c in columns if _is_time(c["type"])]
                cursors = sorted(times, key=lambda n: (not CURSOR_NAMES.search(n), times.index(n)))
                table = sa.table(name, schema=schema)
                rows = con.execute(sa.select(sa.func.count()).select_from(table)).scalar()
                found.append(Table(name=name, rows=int(rows or 0), primary_key=key, cursors=cursors))
        return found
    finally:
        engine.dispose()


def _is_time(kind: sa.types.TypeEngine) -> bool:
    return isinstance(kind, sa.DateTime | sa.Date | sa.TIMESTAMP)


def landing(folder: Path) -> list[Table]:
    """The groups of files in ``folder`` and its ``archive/`` (files already loaded are examples
    too), each sniffed from its newest file."""
    groups: dict[str, list[Path]] = {}
    archive = folder / "archive"
    candidates = [*folder.iterdir(), *(archive.iterdir() if archive.is_dir() else [])]
    for path in sorted(p for p in candidates if p.is_file() and not p.name.startswith(".")):
        groups.setdefault(_pattern(path.name), []).append(path)
    found = []
    with duckdb.connect() as con:
        for pattern, paths in sorted(groups.items()):
            newest = max(paths, key=lambda p: p.stat().st_mtime)
            name = re.sub(r"[^a-z0-9]+", "_", pattern.split("*")[0].split(".")[0].lower()).strip("_") or "files"
            kinds = sorted({re.sub(r"\.(gz|zst|bz2)$", "", "".join(p.suffixes).lower()) for p in paths})
            mixed = (
                f"files of {len(kinds)} kinds ({', '.join(kinds)}): the columns are the newest's"
                if len(kinds) > 1
                else ""
            )
            table = Table(name=name, pattern=pattern, files=len(paths), note=mixed)
            try:
                table.columns = _sniff(con, newest)
            except (duckdb.Error, ValueError) as exc:
                table.note = f"{newest.name} could not be read: {str(exc).splitlines()[0][:160]}"
            found.append(table)
    return found


def _pattern(name: str) -> str:
    """A file name with its digit runs as ``*``, whatever its extensions (a table's files may come
    as CSV, gzipped CSV, JSON lines or Parquet): ``fx_rates_2026-01-02.jsonl`` -> ``fx_rates_*``."""
    stem = re.sub(r"\d+([-_]\d+)*", "*", name).split(".")[0]
    return stem if stem.endswith("*") else f"{stem}.*"


def _sniff(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, str]:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".zst", ".bz2")]
    kind = "parquet" if ".parquet" in suffixes else FILE_KINDS.get(suffixes[-1] if suffixes else "", "")
    if not kind:
        raise ValueError("not a CSV, JSON or Parquet file")
    reader = {"csv": "read_csv", "json": "read_json", "parquet": "read_parquet"}[kind]
    described = con.execute(f"describe select * from {reader}(?)", [str(path)]).fetchall()
    columns = {}
    for name, duck, *_ in described:
        columns[name] = _declared(con, reader, path, name, str(duck))
    return columns


def _declared(con: duckdb.DuckDBPyConnection, reader: str, path: Path, column: str, duck: str) -> str:
    """The declared type for a sniffed one: a fractional number becomes the narrowest
    ``decimal(p,s)`` that holds every value of the file as written."""
    decimal = re.fullmatch(r"DECIMAL\((\d+),(\d+)\)", duck)
    if decimal:
        return f"decimal({decimal[1]},{decimal[2]})"
    if duck in ("DOUBLE", "FLOAT") and reader == "read_csv":
        quoted = '"' + column.replace('"', '""') + '"'
        widths = con.execute(
            f"select max(length(split_part(trim({quoted}), '.', 1))), max(length(split_part(trim({quoted}), '.', 2))) "
            f"from read_csv(?, all_varchar = true)",
            [str(path)],
        ).fetchone()
        whole, fraction = (int(w or 0) for w in widths or (0, 0))
        if fraction and whole + fraction <= 38:
            return f"decimal({max(18, whole + fraction)},{fraction})"
        return "double"
    return DUCK_TYPES.get(duck, "double" if duck in ("DOUBLE", "FLOAT") else "text")


def proposal(name: str, kind: str, tables: list[Table]) -> str:
    """The declaration ``tables`` suggest, as YAML with comments, for ``sources.yml``."""
    lines = [f"  {name}:", f"    kind: {kind}", "    description: (what it is, who owns it)", "    tables:"]
    for t in tables:
        lines.append(f"      {t.name}:" + (f"   # {t.rows:,} rows" if t.rows is not None else f"   # {t.files} files"))
        if kind == "files":
            lines.append(f'        pattern: "{t.pattern}"')
            if t.note:
                lines.append(f"        # {t.note}")
            lines.append("        # primary_key: (the columns that identify a row, if any)")
            if t.columns:
                lines.append("        columns:")
                lines += [f"          {c}: {d}" for c, d in t.columns.items()]
            continue
        if not t.primary_key:  # a database table is declared with its key: left for you to decide
            lines[-1] = "      # " + lines[-1].lstrip()
            lines.append("      #   primary_key: (no primary key in the database: name the columns that identify")
            lines.append("      #   a row, which dusk then merges on; left out until you do)")
            continue
        key = t.primary_key[0] if len(t.primary_key) == 1 else "[" + ", ".join(t.primary_key) + "]"
        lines.append(f"        primary_key: {key}")
        if t.cursors:
            others = f"   # also possible: {', '.join(t.cursors[1:])}" if len(t.cursors) > 1 else ""
            lines.append(f"        cursor: {t.cursors[0]}{others}")
        else:
            lines.append("        # no timestamp column: without a cursor every run reads the whole table")
        lines.append("        write_disposition: merge")
        lines.append("        deletes: key_diff   # or cdc on PostgreSQL (dusk cdc setup)")
    return "\n".join(lines) + "\n"
