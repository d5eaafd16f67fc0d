"""Reads and validates ``ingestion/sources.yml``, the one declaration of what to extract."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

SOURCES_FILE = Path(__file__).resolve().parent / "sources.yml"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

WriteDisposition = Literal["append", "merge", "replace"]
DeleteStrategy = Literal["none", "key_diff", "cdc"]


class ConfigError(ValueError):
    """sources.yml says something the pipeline cannot do; the message names where."""


@dataclass(frozen=True)
class TableSpec:
    """One source table: its key, its cursor, how it is written and how deletes are found."""

    name: str
    primary_key: str
    cursor: str | None
    write_disposition: WriteDisposition
    deletes: DeleteStrategy
    exclude_columns: tuple[str, ...] = ()
    max_delete_share: float = 0.5
    lag_seconds: float = 0.0
    """Re-read this many seconds below the watermark each run (rows committed late)."""


@dataclass(frozen=True)
class SourceSpec:
    """One source: its name (also the dlt source and the ``raw_<name>`` dataset) and tables."""

    name: str
    kind: str
    description: str
    demo: bool
    tables: tuple[TableSpec, ...]
    slot: str = ""
    publication: str = ""

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
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _table(name: str, raw: dict[str, Any], where: str) -> TableSpec:
    known = {"primary_key", "cursor", "write_disposition", "deletes", "exclude_columns", "max_delete_share", "lag"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    if "primary_key" not in raw:
        raise ConfigError(f"{where}: primary_key is required")
    disposition = _choice(
        raw.get("write_disposition", "merge"), ("append", "merge", "replace"), f"{where}.write_disposition"
    )
    deletes = _choice(raw.get("deletes", "none"), ("none", "key_diff", "cdc"), f"{where}.deletes")
    if deletes != "none" and disposition != "merge":
        raise ConfigError(f"{where}: deletes: {deletes} needs write_disposition: merge")
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
    return TableSpec(
        name=_identifier(name, where),
        primary_key=_identifier(raw["primary_key"], f"{where}.primary_key"),
        cursor=_identifier(raw["cursor"], f"{where}.cursor") if raw.get("cursor") else None,
        write_disposition=disposition,
        deletes=deletes,
        exclude_columns=tuple(_identifier(c, f"{where}.exclude_columns") for c in raw.get("exclude_columns", [])),
        max_delete_share=share,
        lag_seconds=float(lag),
    )


def load_sources(path: Path | None = None) -> dict[str, SourceSpec]:
    """Parse sources.yml (or the file ``DUSK_SOURCES_FILE`` names) into specs, raising
    ConfigError naming the offending entry."""
    path = path or Path(os.environ.get("DUSK_SOURCES_FILE") or SOURCES_FILE)
    doc = yaml.safe_load(path.read_text()) or {}
    sources: dict[str, SourceSpec] = {}
    for name, raw in (doc.get("sources") or {}).items():
        where = f"{path.name}: sources.{name}"
        _identifier(name, where)
        if not raw.get("tables"):
            raise ConfigError(f"{where}: no tables listed")
        cdc = raw.get("cdc") or {}
        unknown = set(cdc) - {"slot", "publication"}
        if unknown:
            raise ConfigError(f"{where}.cdc: unknown keys {sorted(unknown)}")
        sources[name] = SourceSpec(
            name=name,
            kind=_choice(raw.get("kind"), ("database",), f"{where}.kind"),
            description=str(raw.get("description", "")),
            demo=bool(raw.get("demo", False)),
            tables=tuple(_table(t, spec or {}, f"{where}.tables.{t}") for t, spec in raw["tables"].items()),
            slot=_identifier(cdc["slot"], f"{where}.cdc.slot") if "slot" in cdc else "",
            publication=_identifier(cdc["publication"], f"{where}.cdc.publication") if "publication" in cdc else "",
        )
    return sources
