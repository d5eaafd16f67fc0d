"""REST API sources, declared in sources.yml and read with dlt's declarative ``rest_api`` source.

dlt does the paging (the declared paginator), the incremental cursor (a query parameter that takes
the cursor's last value; dlt keeps it in its state and commits it with the data, and de-duplicates
rows at the boundary by primary key) and the merge. This module adds what a nightly job needs on
top, in the HTTP session dlt sends every request through (:class:`ResilientSession`):

- a timeout on every request;
- retries of transient failures (429, 5xx, timeouts, dropped connections) with exponential backoff
  and full jitter (tenacity), honouring ``Retry-After`` when the server sends it;
- a circuit breaker: after ``breaker_failures`` failed attempts in a row the source stops asking
  and fails with the endpoint and the last status;
- records served more than once in one night (an updated record that moved to a later page):
  the newest by the cursor wins, ties the last served (:class:`Repeats`); the summary counts
  distinct keys and names the repeats.

A run that fails anywhere loads nothing of that source and leaves the cursor where it was; the
bearer token comes from the environment or dlt's secrets and is never logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import dlt
import requests
import tenacity
from dlt.extract.source import DltSource
from dlt.sources.helpers.rest_client.client import sanitize_url
from dlt.sources.rest_api import rest_api_source

from ingestion.config import SourceSpec, TableSpec

log = logging.getLogger(__name__)

INITIAL_CURSOR = "1970-01-01T00:00:00Z"
_TRANSIENT = (requests.ConnectionError, requests.Timeout)


class CircuitOpenError(RuntimeError):
    """Too many failures in a row: the source stops calling the API for this run."""


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return None if response is None else int(response.status_code)


def transient(exc: BaseException) -> bool:
    """Worth another attempt: a timeout, a dropped connection, 429 or a 5xx answer."""
    if isinstance(exc, _TRANSIENT):
        return True
    status = _status(exc)
    return status is not None and (status == 429 or status >= 500)


class ResilientSession(requests.Session):
    """A requests session with a default timeout, retries with backoff and jitter that honour
    ``Retry-After``, and a circuit breaker across the whole run."""

    def __init__(
        self,
        source: str,
        timeout: float,
        max_attempts: int,
        backoff: float,
        max_backoff: float,
        breaker_failures: int,
    ) -> None:
        super().__init__()
        self.source = source
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff
        self.breaker_failures = breaker_failures
        self.failures_in_a_row = 0
        self.attempts = 0
        self.last_failure = ""
        self._jitter = tenacity.wait_random_exponential(multiplier=backoff, max=max_backoff)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        response = getattr(exc, "response", None)
        header = response.headers.get("Retry-After") if response is not None else None
        if header and header.strip().isdigit():
            return min(float(header), self.max_backoff)
        return float(self._jitter(state))

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(transient),
            reraise=True,
        )
        response: requests.Response = retrying(self._attempt, request, **kwargs)
        return response

    def _attempt(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        endpoint = f"{request.method} {sanitize_url(request.url or '')}"
        if self.failures_in_a_row >= self.breaker_failures:
            raise CircuitOpenError(
                f"source {self.source!r}: circuit breaker open after {self.failures_in_a_row} failed attempts "
                f"in a row; last: {self.last_failure}"
            )
        self.attempts += 1
        try:
            response = super().send(request, **kwargs)  # dlt's response hook raises for >= 400
        except Exception as exc:
            if transient(exc):
                self.failures_in_a_row += 1
                status = _status(exc)
                self.last_failure = f"{endpoint} -> {status if status else type(exc).__name__}"
                log.warning("source=%s attempt failed: %s", self.source, self.last_failure)
            raise
        self.failures_in_a_row = 0
        return response


def session_for(spec: SourceSpec) -> ResilientSession:
    """The HTTP session of one API source, set up from its sources.yml settings."""
    return ResilientSession(
        spec.name,
        timeout=float(spec.option("timeout")),
        max_attempts=int(spec.option("max_attempts")),
        backoff=float(spec.option("backoff")),
        max_backoff=float(spec.option("max_backoff")),
        breaker_failures=int(spec.option("breaker_failures")),
    )


_DLT_TYPES = {
    "text": "text",
    "integer": "bigint",
    "bigint": "bigint",
    "double": "double",
    "boolean": "bool",
    "date": "date",
    "timestamp": "timestamp",
    "json": "json",
}


def dlt_column(declared: str) -> dict[str, Any]:
    """dlt's column hint for a declared type (JSON gives text and numbers; raw gets the type)."""
    if declared.startswith("decimal("):
        precision, scale = declared[len("decimal(") : -1].split(",")
        return {"data_type": "decimal", "precision": int(precision), "scale": int(scale)}
    return {"data_type": _DLT_TYPES[declared]}


SERVED = "_served_seq"
"""Raw's column with each record's position in the night's responses: dlt's merge keeps, per
key, the record with the highest one (``dedup_sort``)."""


class Repeats:
    """One table's records as served in one night, for records served more than once.

    Every record gets its position (:data:`SERVED`). A copy older by the cursor than one already
    served is dropped; the others go on, and dlt's merge keeps the last served per key. Since a
    surviving copy is never older than the copies before it, that is the newest by the cursor,
    ties broken by the last served. Holds one cursor value per distinct key of the night."""

    def __init__(self, spec: SourceSpec, table: TableSpec) -> None:
        self.where = f"source {spec.name!r}, table {table.name!r}"
        self.table = table
        self.served = 0
        self.newest: dict[tuple[Any, ...], Any] = {}
        self.repeated: Counter[tuple[Any, ...]] = Counter()
        self.kept_repeats = 0

    def stamp(self, item: dict[str, Any]) -> dict[str, Any]:
        self.served += 1
        item[SERVED] = self.served
        return item

    def keep(self, item: dict[str, Any]) -> bool:
        key = tuple(item.get(k) for k in self.table.key_columns)
        cursor = item.get(self.table.cursor) if self.table.cursor else None
        if key not in self.newest:
            self.newest[key] = cursor
            return True
        self.repeated[key] += 1
        if self.table.write_disposition == "replace":
            raise ValueError(
                f"{self.where}: the API served {self.table.key_text(key)} twice in one full reload; nothing was "
                "loaded. Declare write_disposition: merge for the table (the newest copy then wins)."
            )
        newest = self.newest[key]
        if cursor is not None and newest is not None and cursor < newest:
            return False  # an older copy than one already kept
        self.newest[key] = cursor
        self.kept_repeats += 1  # passed on too: dlt's merge keeps one of the key's copies
        return True

    def note(self) -> str | None:
        """The summary's line about the repeats, if there were any."""
        if not self.repeated:
            return None
        sample = "; ".join(self.table.key_text(k) for k in sorted(self.repeated, key=str)[:5])
        newest = f"the newest by {self.table.cursor}" if self.table.cursor else "the last served"
        return (
            f"{self.table.name}: {sum(self.repeated.values())} record(s) served again in this run "
            f"({len(self.repeated)} key(s), e.g. {sample}); {newest} was kept, counted once"
        )


def api_source(
    spec: SourceSpec,
    base_url: str,
    token: str | None,
    session: requests.Session,
    window: tuple[datetime, datetime] | None = None,
    repeats: dict[str, Repeats] | None = None,
) -> DltSource:
    """dlt's rest_api source for one declared API: a resource per table, incremental on the
    table's cursor when it has one. A backfill ``window`` (start, end) reads the records with
    ``start <= cursor < end`` as a bounded incremental: dlt neither reads nor moves the stored
    cursor then, and tables without a cursor are left out. ``repeats`` receives each keyed
    table's :class:`Repeats`."""
    resources: list[Any] = []
    repeats = {} if repeats is None else repeats
    for table in spec.tables:
        params: dict[str, Any] = {"limit": int(spec.option("page_size"))}
        endpoint: dict[str, Any] = {"path": table.path, "params": params, "data_selector": table.data_selector}
        if window is not None:
            if not table.cursor:
                continue
            # bounded: the endpoint-level form is the one that takes an end value
            endpoint["incremental"] = {
                "start_param": table.cursor_param,
                "cursor_path": table.cursor,
                "initial_value": _iso(window[0]),
                "end_value": _iso(window[1]),
            }
        elif table.cursor:
            incremental: dict[str, Any] = {
                "type": "incremental",
                "cursor_path": table.cursor,
                "initial_value": INITIAL_CURSOR,
            }
            if table.lag_seconds:
                incremental["lag"] = table.lag_seconds
            params[table.cursor_param] = incremental
        columns = {name: dlt_column(declared) for name, declared in table.columns}
        if table.key_columns:
            repeats[table.name] = Repeats(spec, table)
            columns[SERVED] = {"data_type": "bigint", "dedup_sort": "desc"}
        resources.append(
            {
                "name": table.name,
                "primary_key": table.key_columns,
                "write_disposition": table.write_disposition,
                "columns": columns,
                "endpoint": endpoint,
            }
        )
    client: dict[str, Any] = {
        "base_url": base_url,
        "paginator": {"type": "cursor", "cursor_path": "next_cursor", "cursor_param": "cursor"},
        "session": session,
    }
    if token:
        client["auth"] = {"type": "bearer", "token": token}
    source = rest_api_source({"client": client, "resources": resources}, name=spec.name)  # type: ignore[typeddict-item]
    source.max_table_nesting = 0
    for name, seen in repeats.items():
        # after dlt's incremental step: only the records this run loads are stamped and compared
        source.resources[name].add_map(seen.stamp).add_filter(seen.keep)
    return source


def _iso(moment: datetime) -> str:
    """A backfill bound as ISO 8601 UTC with microseconds (``...T00:00:00.000000Z``): dlt compares
    the cursor values the API sends, and this form sorts with that of RFC 3339 APIs."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def endpoint_settings(spec: SourceSpec) -> tuple[str | None, str | None]:
    """The source's base URL (env/config over sources.yml) and bearer token (env/secrets only)."""
    base_url: Any = dlt.config.get(f"sources.{spec.name}.base_url") or spec.option("base_url")
    token: Any = dlt.secrets.get(f"sources.{spec.name}.token")
    return (str(base_url) if base_url else None), (str(token) if token else None)
