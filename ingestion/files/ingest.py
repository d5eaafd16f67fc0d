"""Ingest a files source: plan the landing folder, parse and type the new files, load them with
their ledger rows in one dlt run, archive them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ingestion.files.landing import archive, landing_dir, plan_files
from ingestion.files.source import files_source, prepare
from ingestion.rows import missing_tables

if TYPE_CHECKING:
    from ingestion.run import SourceRun

log = logging.getLogger(__name__)


def ingest(run: SourceRun) -> None:
    """Load the landing folder's new files."""
    spec = run.pinned()
    landing = landing_dir(spec, run.target.landing_dir, run.target.base_dir)
    plan = plan_files(run.pipeline, spec, landing)
    prepared = prepare(spec, plan, run.staging, run.target.file_column)
    create = tuple(t.name for t in missing_tables(run.pipeline, spec))
    if plan.ledger or create:
        run.load(files_source(spec, plan, prepared, create, run.target.file_column))
    if spec.option("archive"):
        archive(plan)
    quarantined = {name: item.quarantined for name, item in prepared.items()}
    run.finish(quarantined=quarantined, ran=bool(plan.ledger), failures=plan.failures)
    run.noted([note for item in prepared.values() for note in item.notes])
    for name, item in prepared.items():
        run.merged(
            name,
            item.replaced,
            f"{name}: {item.replaced} row(s) were replaced by a later file's row with the same key in this run "
            "(the last file in name order wins)",
        )
    log.info("source=%s files new=%d seen=%d failed=%d", spec.name, len(plan.new), len(plan.seen), len(plan.failures))
