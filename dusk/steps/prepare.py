"""The prepare step: read and check the declarations (dbt's sources regenerated from sources.yml
when stale), make the warehouse ready (ledger tables, PII salt), create the demo on first use,
and choose tonight's sources."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, replace

from dusk import generate
from dusk.demo import ensure_demo, shop_connections
from dusk.record import Plan, RunResult
from dusk.settings import PROD, PROJECT_DIR, Settings
from dusk.warehouse import Connection as WarehouseConnection
from dusk.warehouse import check_schemas, ensure_ledger, ensure_salt, read_salt
from ingestion.declaration import ConfigError, SourceSpec, load_sources
from ingestion.run import BACKFILL_KINDS, Connection

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """What the later steps work from."""

    specs: dict[str, SourceSpec]
    chosen: list[SourceSpec]
    connections: dict[str, Connection] = field(default_factory=dict)
    """Connections handed to ingestion (the demo's), by source name."""


class DiskFull(RuntimeError):
    """Too little free space to start a night: a write would fail halfway."""


def check_free_space(settings: Settings) -> None:
    """Refuse to start when a folder the night writes to has less than ``min_free_mb`` free: the
    data dir (run records, logs, dlt's packages), the DuckDB warehouse's and dbt's target folder.
    A disk that fills later fails the step that met it, naming the device's error."""
    if not settings.min_free_mb:
        return
    folders = {settings.data_dir, settings.target_path}
    if settings.target == "duckdb":
        folders.add(settings.warehouse.parent)
    for folder in sorted(folders):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        free = shutil.disk_usage(existing).free / 1e6
        if free < settings.min_free_mb:
            raise DiskFull(
                f"only {free:.1f} MB free at {existing} (DUSK_MIN_FREE_MB={settings.min_free_mb:g}): free some "
                "space (dusk prune removes old run records, logs and dlt packages) or move DUSK_DATA_DIR; the "
                "night did not start, nothing was changed"
            )


def prepare(settings: Settings, con: WarehouseConnection, plan: Plan, record: RunResult) -> Prepared:
    """Raise (naming what to fix) when the night cannot start."""
    specs = load_sources(settings.sources_file)
    dbt_sources(specs)
    if settings.env != PROD:
        specs = {name: in_environment(spec, settings.env) for name, spec in specs.items()}
    check_schemas(settings.publish_schemas)
    chosen = choose(plan, specs)
    ensure_salt(con, read_salt(settings))
    ensure_ledger(con)
    prepared = Prepared(specs, chosen)
    if settings.demo:
        record.demo_created = ensure_demo(settings, specs)
        prepared.connections = shop_connections(settings, specs)
    return prepared


def dbt_sources(specs: dict[str, SourceSpec]) -> None:
    """dbt's sources as sources.yml declares them: stale files regenerated (dusk generate), and a
    dbt source that sources.yml no longer declares refused, naming it."""
    stray = generate.stray(specs)
    if stray:
        names = ", ".join(str(p.relative_to(PROJECT_DIR)) for p in stray)
        raise ConfigError(
            f"dbt sources without an entry in sources.yml: {names}. Declare the source in sources.yml, "
            "or remove its folder under models/staging (its models read a source nothing loads)"
        )
    for path in generate.write(specs):
        log.info("regenerated %s from sources.yml", path.relative_to(PROJECT_DIR))


def in_environment(spec: SourceSpec, env: str) -> SourceSpec:
    """A source as an environment other than prod reads it: what reading takes from the source
    system is prod's, so the environment keeps its own. A stream has its own durable consumers
    (``<durable>_<env>``: acknowledging prod's messages would take them from prod); CDC its own
    replication slot (``<slot>_<env>``, made by ``dusk --env <env> cdc setup``: reading prod's slot
    would move it past what prod has not read); a files source moves no file (prod archives them)
    and reads the archive too."""
    options = dict(spec.options)
    if spec.kind == "stream":
        options["durable"] = f"{spec.option('durable') or 'dusk_' + spec.name}_{env}"
    if spec.kind == "files":
        options |= {"archive": False, "read_archive": True}
    slot = f"{spec.cdc_slot}_{env}" if any(t.deletes == "cdc" for t in spec.tables) else spec.slot
    return replace(spec, options=tuple(options.items()), slot=slot)


def choose(plan: Plan, specs: dict[str, SourceSpec]) -> list[SourceSpec]:
    """The sources the plan ingests; a backfill of every source leaves out those that cannot
    re-read a window, and refuses them when they are named."""
    unknown = sorted(set(plan.sources) - set(specs))
    if unknown:
        raise ValueError(f"no source {', '.join(unknown)} in sources.yml (known: {', '.join(sorted(specs))})")
    chosen = [specs[name] for name in plan.sources] if plan.sources else list(specs.values())
    if plan.backfill is not None:
        refused = [s.name for s in chosen if s.kind not in BACKFILL_KINDS]
        if plan.sources and refused:
            raise ValueError(
                f"cannot backfill {', '.join(refused)}: only {' and '.join(BACKFILL_KINDS)} sources re-read a "
                "window of their cursor (files are loaded once by name, stream messages once acknowledged)"
            )
        chosen = [s for s in chosen if s.kind in BACKFILL_KINDS]
    return chosen
