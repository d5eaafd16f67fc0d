"""Re-extract tables in full at the next read (``dusk resync``): after a repair at the source, or
a new column whose history is wanted, without wiping dlt's state by hand.

A table's incremental cursor (dlt's resource state) is forgotten, so the next read of a database
or API table starts from the beginning. Every row is read again and merged on its key: raw ends
equal to the source, keeps the rows key-diff marked deleted (a key the source no longer has is
not read back), and the cursor is stored again at the end of that read. Files and streams have
no cursor to forget (see docs/operations.md: a landing file is loaded again by dropping it again, a
stream replayed from its durable consumer); a ``deletes: cdc`` table follows the server's
replication slot, whose position a full re-read must not skip: both are refused, naming why.
"""

from __future__ import annotations

from ingestion.declaration import SourceSpec
from ingestion.run import Target, make_pipeline

RESYNC_KINDS = ("database", "api")


class ResyncRefused(RuntimeError):
    """The tables cannot be re-extracted this way; the message says why and what to do."""


def resync(spec: SourceSpec, target: Target, tables: list[str] | None = None) -> list[str]:
    """Forget the incremental cursors of ``tables`` (default: all) of a source; the names."""
    if spec.kind not in RESYNC_KINDS:
        how = {
            "files": "drop the files into its landing folder again (new content is loaded and merged), "
            "or delete their rows from raw_<source>._files first",
            "stream": "delete its durable consumer (nats consumer rm <stream> <durable>_<table>): the next run "
            "reads the stream from its start, merged on the event key",
        }[spec.kind]
        raise ResyncRefused(f"source {spec.name!r} is a {spec.kind} source, which keeps no cursor to forget: {how}")
    declared = {t.name: t for t in spec.tables}
    names = tables or list(declared)
    unknown = sorted(set(names) - set(declared))
    if unknown:
        raise ResyncRefused(
            f"source {spec.name!r} declares no table {', '.join(unknown)} (it has {', '.join(declared)})"
        )
    cdc = [n for n in names if declared[n].deletes == "cdc"]
    if cdc:
        raise ResyncRefused(
            f"source {spec.name!r}: {', '.join(cdc)} follow(s) the replication slot (deletes: cdc), whose position a "
            "full re-read would skip: re-create the slot (dusk cdc drop, then dusk cdc setup) and the next run "
            "loads the table in full"
        )
    pipeline = make_pipeline(spec, target)
    with pipeline.managed_state() as state:
        resources = state.get("sources", {}).get(spec.name, {}).get("resources", {})
        for name in names:
            resources.pop(name, None)
    return names
