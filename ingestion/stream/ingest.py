"""Ingest a stream source: fetch a batch, load it, and only then acknowledge it."""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from ingestion.rows import missing_tables
from ingestion.stream.reader import Batch, StreamReader, StreamUnreachable
from ingestion.stream.source import stream_source

if TYPE_CHECKING:
    from ingestion.run import SourceRun

log = logging.getLogger(__name__)


def ingest(run: SourceRun) -> None:
    """Load the messages pending on the source's consumer."""
    spec = run.pinned()
    create = tuple(t.name for t in missing_tables(run.pipeline, spec))
    try:
        reader = StreamReader(spec).open()
    except StreamUnreachable as exc:
        if not spec.optional:
            raise
        # an optional stream (e.g. the demo's): the night goes on without it, and says so
        run.result.skipped = str(exc)
        if create:  # raw still gets the (empty) tables that dbt reads
            run.run(stream_source(spec, Batch(), create))
        run.finish(ran=False)
        log.warning("source=%s skipped: %s", spec.name, exc)
        return
    with reader:
        batch = reader.fetch()
        if batch.messages or create:
            try:
                info = run.run(stream_source(spec, batch, create))
            except Exception:
                reader.nak(batch)  # not loaded: deliver again at once
                raise
            reader.ack(batch)  # only now: the rows are committed in the warehouse
            run.loaded(info)
    quarantined = Counter(str(q["source_table"]) for q in batch.quarantine)
    run.finish(quarantined=dict(quarantined), ran=bool(batch.messages))
    run.noted(batch.notes)
    for name, repeats in batch.repeats.items():
        run.merged(
            name,
            repeats,
            f"{name}: {repeats} message(s) repeated the key of another message of this batch (a producer's "
            "retry or an update); the last one by stream sequence was kept",
        )
    log.info("source=%s stream messages=%d quarantined=%d", spec.name, len(batch.messages), len(batch.quarantine))
