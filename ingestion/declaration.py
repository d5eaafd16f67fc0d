"""Reads and validates ``ingestion/sources.yml``, the one declaration of what to extract."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ingestion.column_types import COLUMN_TYPE, DATABASE_COLUMN_TYPE, TYPES

SOURCES_FILE = Path(__file__).resolve().parent / "sources.yml"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

WriteDisposition = Literal["append", "merge", "replace"]
KINDS = ("database", "api", "files", "stream")
"""The types a file or stream table may declare for its columns."""

OPTIONS: dict[str, dict[str, Any]] = {
    "database": {"statement_timeout": 3600.0, "connect_timeout": 30.0},
    "api": {
        "base_url": None,  # None: the demo's local payments API, started by the runner
        "page_size": 100,
        "timeout": 10.0,
        "max_attempts": 5,
        "backoff": 0.5,
        "max_backoff": 30.0,
        "breaker_failures": 8,
        "max_pages": 10_000,
    },
    "files": {"path": None, "archive": False, "max_bad_share": 0.1, "read_archive": False},
    "stream": {
        "servers": "nats://127.0.0.1:4222",
        "stream": None,
        "durable": None,
        "batch_size": 500,
        "max_messages": 100_000,
        "ack_wait": 300.0,
        "fetch_timeout": 1.0,
    },
}
"""Each kind's source-level settings and their defaults."""
DeleteStrategy = Literal["none", "key_diff", "cdc"]


class ConfigError(ValueError):
    """sources.yml says something the pipeline cannot do; the message names where (the entry,
    and the file's line once :func:`load_sources` has placed it) and, where one is known, the fix."""


@dataclass(frozen=True)
class TableSpec:
    """One source table: its key, its cursor, how it is written and how deletes are found."""

    name: str
    primary_key: tuple[str, ...]
    """Every primary key column, in the declared order (several: a composite key; none: a file
    table without a key)."""
    cursor: str | None
    write_disposition: WriteDisposition
    deletes: DeleteStrategy
    exclude_columns: tuple[str, ...] = ()
    max_delete_share: float = 0.5
    lag_seconds: float = 0.0
    """Re-read this many seconds below the watermark each run (rows committed late)."""
    path: str = ""
    """API: the endpoint path under the base URL."""
    cursor_param: str = ""
    """API: the query parameter that takes the cursor's last value (e.g. ``updated_since``)."""
    data_selector: str = ""
    """API: where the records are in a response (a JSON path, e.g. ``data``)."""
    pattern: str = ""
    """Files: the glob (in the landing folder) of this table's files."""
    subject: str = ""
    """Stream: the NATS subject whose messages are this table's rows."""
    columns: tuple[tuple[str, str], ...] = ()
    """Files and stream: the declared columns and their types, in order. Database: raw types set
    for some source columns (``text`` or ``decimal(p,s)``), overriding the type table."""
    inferred: bool = False
    """Files and stream without ``columns:``: the columns are inferred from the data on first load
    and pinned in raw (``ingestion.infer``); ``columns`` then holds the pinned ones, each run."""
    event_time: str = ""
    """The column dbt's microbatch models read this table by: the runner rebuilds the days of the
    rows each run loaded (late events included)."""
    schema: str = ""
    """Database: the schema (PostgreSQL) or database (MySQL) the table is in; empty: ``public``,
    or the connection's database. Always named in every query, never left to the search path."""

    @property
    def key_columns(self) -> list[str]:
        """The primary key's columns, in the declared order."""
        return list(self.primary_key)

    def key_text(self, key: tuple[Any, ...]) -> str:
        """A key's values as a message shows them: ``order_id=7`` or ``order_id=7, line_no=2``."""
        return ", ".join(f"{n}={v!r}" for n, v in zip(self.primary_key, key, strict=True))


@dataclass(frozen=True)
class SourceSpec:
    """One source: its name (also the dlt source and the ``raw_<name>`` dataset) and tables."""

    name: str
    kind: str
    description: str
    demo: bool
    """Part of the runner's demo (created and served by it); ingestion never reads it."""
    tables: tuple[TableSpec, ...]
    slot: str = ""
    publication: str = ""
    options: tuple[tuple[str, Any], ...] = ()
    """Kind-specific settings (api, files, stream), validated; read with :meth:`option`."""
    optional: bool = False
    """A stream source skipped, and named, when its server or stream is not there (``optional: true``)."""

    def option(self, name: str) -> Any:
        """A kind-specific setting (its default when sources.yml does not set it)."""
        return {**OPTIONS[self.kind], **dict(self.options)}[name]

    @property
    def cdc_slot(self) -> str:
        """PostgreSQL replication slot of the ``deletes: cdc`` tables (default ``dusk_<name>``)."""
        return self.slot or f"dusk_{self.name.lower()}"

    @property
    def cdc_publication(self) -> str:
        """PostgreSQL publication of the ``deletes: cdc`` tables (default ``dusk_<name>``)."""
        return self.publication or f"dusk_{self.name.lower()}"

    @property
    def dataset(self) -> str:
        """The warehouse schema dlt loads into, and that dbt reads from."""
        return f"raw_{self.name}"

    def table(self, name: str) -> TableSpec:
        """The spec of table ``name``."""
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"source {self.name!r} has no table {name!r}")


def _identifier(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ConfigError(f"{where}: {value!r} is not a plain identifier (letters, digits, underscores)")
    return value


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> Any:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}{_did_you_mean(value, allowed)}")
    return value


def _did_you_mean(value: Any, known: Any) -> str:
    close = difflib.get_close_matches(str(value), sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _refuse_unknown(raw: dict[str, Any], known: set[str], where: str, list_known: bool = False) -> None:
    """Refuse keys sources.yml does not know, naming the nearest known one (a typo's fix)."""
    unknown = sorted(set(raw) - known, key=str)
    if unknown:
        hint = _did_you_mean(unknown[0], known)
        listed = f" (known: {', '.join(sorted(known))})" if list_known and not hint else ""
        named = f"key {unknown[0]!r}" if len(unknown) == 1 else f"keys {unknown}"
        raise ConfigError(f"{where}.{unknown[0]}: unknown {named}{hint}{listed}")


_TABLE_KEYS = {
    "database": {
        "primary_key",
        "cursor",
        "write_disposition",
        "deletes",
        "exclude_columns",
        "max_delete_share",
        "lag",
        "schema",
        "columns",
    },
    "api": {"primary_key", "cursor", "write_disposition", "lag", "path", "cursor_param", "data_selector", "columns"},
    "files": {"primary_key", "write_disposition", "pattern", "columns"},
    "stream": {"primary_key", "subject", "columns"},
}
for _keys_of_kind in _TABLE_KEYS.values():
    _keys_of_kind.add("event_time")


def _keys(raw: Any, where: str) -> tuple[str, ...]:
    values = raw if isinstance(raw, list) else [raw]
    keys = tuple(_identifier(v, where) for v in values)
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{where}: a column is named twice in {list(keys)}")
    return keys


"""The raw types a database table's ``columns:`` may set for a source column (overrides)."""


def _columns(raw: Any, where: str, kind: str = "files") -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: a mapping of column name to type is required")
    columns = []
    for name, type_ in raw.items():
        type_ = str(type_).lower().replace(" ", "")
        if kind == "database":
            found = DATABASE_COLUMN_TYPE.match(type_)
            if not found or (found.group(2) and not 0 <= int(found.group(3)) <= int(found.group(2)) <= 38):
                raise ConfigError(
                    f"{where}.{name}: a database column's type may be set to text (the source's exact text) or "
                    f"decimal(p,s) with s <= p <= 38, got {type_!r}{_decimal_hint(name, type_)}"
                )
            columns.append((_identifier(name, where), type_))
            continue
        if not COLUMN_TYPE.match(type_):
            raise ConfigError(
                f"{where}.{name}: type {type_!r} is not one of text, integer, bigint, double, boolean, date, "
                f"timestamp, json, decimal(p,s){_decimal_hint(name, type_) or _did_you_mean(type_, TYPES)}"
            )
        columns.append((_identifier(name, where), type_))
    return tuple(columns)


def _decimal_hint(name: Any, type_: str) -> str:
    """The corrected form of a decimal YAML split or mangled: ``{amount: decimal(12, 2)}`` in a
    flow mapping reads as ``amount: "decimal(12"`` and a second column ``2)``."""
    if not type_.startswith("decimal"):
        return ""
    digits = re.findall(r"\d+", type_)
    precision, scale = (digits + ["12", "2"][len(digits) :])[:2]
    return f'; write it quoted, with no space: {name}: "decimal({precision},{scale})"'


def _table(kind: str, name: str, raw: dict[str, Any], where: str) -> TableSpec:
    _refuse_unknown(raw, _TABLE_KEYS[kind], where)
    if "primary_key" not in raw and kind != "files":
        raise ConfigError(f"{where}: primary_key is required")
    keys = _keys(raw["primary_key"], f"{where}.primary_key") if "primary_key" in raw else ()
    if kind == "database" and not keys:
        raise ConfigError(f"{where}.primary_key: a database table needs a primary key (one column or a list)")
    disposition = _choice(
        raw.get("write_disposition", "merge"), ("append", "merge", "replace"), f"{where}.write_disposition"
    )
    deletes = _choice(raw.get("deletes", "none"), ("none", "key_diff", "cdc"), f"{where}.deletes")
    if deletes != "none" and disposition != "merge":
        raise ConfigError(f"{where}: deletes: {deletes} needs write_disposition: merge")
    if deletes == "cdc" and raw.get("schema", "public") != "public":
        raise ConfigError(f"{where}: deletes: cdc captures tables of schema public only (use deletes: key_diff)")
    if deletes == "cdc" and raw.get("cursor"):
        raise ConfigError(f"{where}: deletes: cdc takes no cursor (the replication position is the cursor)")
    share = float(raw.get("max_delete_share", 0.5))
    if not 0 < share <= 1:
        raise ConfigError(f"{where}.max_delete_share: must be in (0, 1], got {share}")
    lag = raw.get("lag", 0)
    if not isinstance(lag, int | float) or isinstance(lag, bool) or lag < 0:
        raise ConfigError(f"{where}.lag: seconds as a number >= 0, got {lag!r}")
    if lag and not raw.get("cursor"):
        raise ConfigError(f"{where}.lag: needs a cursor")
    required = {"api": ("path",), "files": ("pattern",), "stream": ("subject",)}.get(kind, ())
    for key in required:
        if not raw.get(key):
            raise ConfigError(f"{where}: {key} is required for a {kind} source")
    if kind == "api" and raw.get("cursor") and not raw.get("cursor_param"):
        raise ConfigError(f"{where}: cursor_param (the query parameter that takes the cursor) is required")
    columns = _columns(raw["columns"], f"{where}.columns", kind) if "columns" in raw else ()
    # files and streams declare every column or none (inferred); an API's columns are type hints
    inferred = kind in ("files", "stream") and "columns" not in raw
    missing = [k for k in keys if kind in ("files", "stream") and not inferred and k not in dict(columns)]
    if missing:
        raise ConfigError(f"{where}.primary_key: {missing} not among the declared columns")
    return TableSpec(
        name=_identifier(name, where),
        primary_key=keys,
        cursor=str(raw["cursor"]) if raw.get("cursor") else None,
        write_disposition=disposition,
        deletes=deletes,
        exclude_columns=tuple(_identifier(c, f"{where}.exclude_columns") for c in raw.get("exclude_columns", [])),
        max_delete_share=share,
        lag_seconds=float(lag),
        path=str(raw.get("path", "")),
        cursor_param=str(raw.get("cursor_param", "")),
        data_selector=str(raw.get("data_selector", "data" if kind == "api" else "")),
        pattern=str(raw.get("pattern", "")),
        subject=str(raw.get("subject", "")),
        columns=columns,
        inferred=inferred,
        event_time=_identifier(raw["event_time"], f"{where}.event_time") if raw.get("event_time") else "",
        schema=_identifier(raw["schema"], f"{where}.schema") if raw.get("schema") else "",
    )


def _options(kind: str, raw: Any, where: str) -> tuple[tuple[str, Any], ...]:
    defaults = OPTIONS[kind]
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping of settings is required")
    _refuse_unknown(raw, set(defaults), where, list_known=True)
    merged = {**defaults, **raw}
    for key, default in defaults.items():
        value = merged[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: true or false, got {value!r}")
        number = isinstance(default, int | float) and not isinstance(default, bool)
        if number and (not isinstance(value, int | float) or isinstance(value, bool) or value <= 0):
            raise ConfigError(f"{where}.{key}: a number > 0, got {value!r}")
    return tuple(sorted(merged.items()))


def load_sources(path: Path | None = None) -> dict[str, SourceSpec]:
    """Parse sources.yml (``path``, default ingestion/sources.yml) into specs, raising
    ConfigError naming the offending entry."""
    path = path or SOURCES_FILE
    text = path.read_text()
    try:
        tree = yaml.compose(text)
        doc = yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as exc:
        # the context (where a bracket was opened) is the line to fix; the problem is where it showed
        lines = sorted({m.line + 1 for m in (exc.context_mark, exc.problem_mark) if m})
        problem = ", ".join(str(p) for p in (exc.context, exc.problem) if p)
        shown = "\n".join(_excerpt(text, n) for n in lines)
        line = lines[0] if lines else 0
        raise ConfigError(
            f"{path.name}, line {line}: not valid YAML ({problem}){_quote_hint(text, line)}\n{shown}"
        ) from None
    try:
        return _sources(doc)
    except ConfigError as exc:
        line = _line_of(tree, str(exc))
        if not line:
            raise ConfigError(f"{path.name}: {exc}") from None
        raise ConfigError(f"{path.name}, line {line}: {exc}\n{_excerpt(text, line)}") from None


def _line_of(tree: yaml.Node | None, message: str) -> int:
    """The line (1-based; 0: not found) of the deepest entry of the dotted path ``sources.a.b...``
    a message begins with. Keys are matched whole, so a key holding a dot or a space is found."""
    rest = message.split(": ", 1)[0]
    node, line = tree, 0
    while rest and isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value)
            if rest == name or rest.startswith(name + "."):
                node, line, rest = value, key.start_mark.line + 1, rest[len(name) + 1 :]
                break
        else:
            break
    return line


def _excerpt(text: str, line: int) -> str:
    lines = text.splitlines()
    return f"  {line:>4} | {lines[line - 1]}" if 0 < line <= len(lines) else ""


def _quote_hint(text: str, line: int) -> str:
    lines = text.splitlines()
    shown = lines[line - 1] if 0 < line <= len(lines) else ""
    if re.search(r"[\[{(,]", shown):
        return '; a value holding brackets, braces or commas must be quoted, e.g. amount: "decimal(12,2)"'
    return ""


def _sources(doc: Any) -> dict[str, SourceSpec]:
    if not isinstance(doc, dict):
        raise ConfigError("sources: the file must be a mapping with a sources: entry")
    sources: dict[str, SourceSpec] = {}
    for name, raw in (doc.get("sources") or {}).items():
        where = f"sources.{name}"
        _identifier(name, where)
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: a mapping with kind: and tables: is required")
        if not raw.get("tables"):
            raise ConfigError(f"{where}: no tables listed")
        kind = _choice(raw.get("kind"), KINDS, f"{where}.kind")
        if "sla" in raw:
            raise ConfigError(
                f"{where}.sla: a source's freshness is declared once, in dbt: set freshness: {{warn_after: "
                f"{{count: 26, period: hour}}, error_after: {{count: 50, period: hour}}}} under config: of source "
                f"{name} in models/staging/{name}/_{name}__sources.yml, and remove sla: here"
            )
        known = {"kind", "description", "demo", "optional", "tables", kind} | ({"cdc"} if kind == "database" else set())
        _refuse_unknown(raw, known, where)
        cdc = raw.get("cdc") or {}
        _refuse_unknown(cdc, {"slot", "publication"}, f"{where}.cdc")
        sources[name] = SourceSpec(
            name=name,
            kind=kind,
            description=str(raw.get("description", "")),
            demo=bool(raw.get("demo", False)),
            optional=bool(raw.get("optional", False)),
            tables=tuple(_table(kind, t, spec or {}, f"{where}.tables.{t}") for t, spec in raw["tables"].items()),
            options=_options(kind, raw.get(kind), f"{where}.{kind}"),
            slot=_identifier(cdc["slot"], f"{where}.cdc.slot") if "slot" in cdc else "",
            publication=_identifier(cdc["publication"], f"{where}.cdc.publication") if "publication" in cdc else "",
        )
    return sources
