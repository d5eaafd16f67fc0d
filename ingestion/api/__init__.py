"""REST API sources, declared in sources.yml and read with dlt's declarative ``rest_api`` source.

dlt does the paging (the declared paginator), the incremental cursor (a query parameter that takes
the cursor's last value; dlt keeps it in its state and commits it with the data, and de-duplicates
rows at the boundary by primary key) and the merge. This module adds what a nightly job needs on
top, in the HTTP session dlt sends every request through (:mod:`.session`):

- a timeout on every request;
- retries of transient failures (429, 5xx, timeouts, dropped connections) with exponential backoff
  and full jitter (tenacity), honouring ``Retry-After`` when the server sends it;
- a circuit breaker: after ``breaker_failures`` failed attempts in a row the source stops asking
  and fails with the endpoint and the last status;
- records served more than once in one night (an updated record that moved to a later page):
  the newest by the cursor wins, ties the last served (``Repeats`` in :mod:`.source`); the summary counts
  distinct keys and names the repeats.

A run that fails anywhere loads nothing of that source and leaves the cursor where it was; the
bearer token comes from the environment or dlt's secrets and is never logged.
"""

from ingestion.api.session import CircuitOpenError, ResilientSession, session_for
from ingestion.api.source import Repeats, api_source, endpoint_settings

__all__ = [
    "CircuitOpenError",
    "Repeats",
    "ResilientSession",
    "api_source",
    "endpoint_settings",
    "ingest",
    "session_for",
]
