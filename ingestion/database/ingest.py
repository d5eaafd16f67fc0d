"""Ingest a database source: plan every table, then extract and load them in one dlt run."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import dlt
import sqlalchemy as sa

from ingestion.database.extract import database_source
from ingestion.database.plan import plan_source
from ingestion.declaration import SourceSpec

if TYPE_CHECKING:
    from ingestion.run import Connection, SourceRun

log = logging.getLogger(__name__)


def credentials(spec: SourceSpec, connection: Connection) -> str:
    """The source's connection string: the one handed in, else dlt's secrets or environment."""
    if connection.credentials:
        return connection.credentials
    configured: Any = dlt.secrets.get(f"sources.{spec.name}.credentials")
    if configured:
        return str(configured)
    raise RuntimeError(
        f"source {spec.name!r}: no connection configured; set SOURCES__{spec.name.upper()}__CREDENTIALS "
        f"or [sources.{spec.name}] credentials in .dlt/secrets.toml"
    )


def ingest(run: SourceRun) -> None:
    """Plan, extract and load the source's tables."""
    url = sa.make_url(credentials(run.spec, run.connection))
    plans = plan_source(run.pipeline, url, run.spec, run.only, now=run.detected_at, window=run.window)
    # recorded before loading: a widening is applied to raw at planning, whatever the load does
    run.result.schema_changes = [c for p in plans for c in p.changes]
    run.result.notes = [n for p in plans for n in p.notes]
    for change in run.result.schema_changes:
        log.warning("source=%s schema change: %s", run.spec.name, change)
    run.load(database_source(run.spec, url, plans, run.staging))
    run.finish(deleted={p.spec.name: p.deleted_count for p in plans})
