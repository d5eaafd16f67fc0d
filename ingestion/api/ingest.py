"""Ingest an API source: every declared endpoint through one resilient session, in one dlt run."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ingestion.api.session import session_for
from ingestion.api.source import Repeats, api_source, endpoint_settings

if TYPE_CHECKING:
    from ingestion.run import SourceRun

log = logging.getLogger(__name__)


def ingest(run: SourceRun) -> None:
    """Page through the source's endpoints and load what changed."""
    spec = run.spec
    configured_url, configured_token = endpoint_settings(spec)
    base_url = run.connection.base_url or configured_url
    token = run.connection.token or configured_token
    if not base_url:
        raise RuntimeError(
            f"source {spec.name!r}: no base URL; set SOURCES__{spec.name.upper()}__BASE_URL or "
            f"{spec.kind}.base_url in sources.yml"
        )
    session = session_for(spec)
    repeats: dict[str, Repeats] = {}
    run.load(api_source(spec, base_url, token, session, run.window, repeats))
    run.finish()
    for name, seen in repeats.items():
        # raw received one row per key: the summary counts those, and names the repeats
        note = seen.note()
        if note:
            run.noted([note])
        run.merged(name, seen.kept_repeats, None)
    log.info("source=%s api requests=%d", spec.name, session.attempts)
