"""How ingestion reads a failure: the one rule for "worth another attempt", and one line naming
the source and the innermost cause (dlt wraps errors in its step exceptions)."""

from __future__ import annotations

import re

import requests
from dlt.load.exceptions import LoadClientJobFailed
from dlt.normalize.exceptions import NormalizeJobFailed

from ingestion.declaration import SourceSpec

TRANSIENT_WORDS = (
    "connection refused",
    "timed out",
    "timeout",
    "could not connect",
    "connection reset",
    "server closed the connection",
    "terminating connection",
    "temporarily unavailable",
    "circuit breaker open",
    "no servers available",
)
PERMANENT_WORDS = ("authentication", "password", "permission denied", "does not exist", "access denied")
JOB_FAILURES = (LoadClientJobFailed, NormalizeJobFailed)
"""dlt's terminal failures of one job of a load package: a value raw's column cannot hold, found
when the package is written as files (normalise) or loaded by the warehouse (load)."""


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes (dlt's step exceptions hold theirs in ``exception``)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        nxt = seen.__cause__ or seen.__context__ or getattr(seen, "exception", None)
        seen = nxt if isinstance(nxt, BaseException) else None
    return chain


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed request's answer (None when there was no answer)."""
    response = getattr(exc, "response", None)
    return None if response is None else int(response.status_code)


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying: the network or the server was briefly unavailable (a
    refused or dropped connection, a timeout, an HTTP 429 or 5xx answer). A wrong password, a
    missing table or bad data is never transient (retrying cannot help). The API's session uses it
    for each request, the runner for a whole source."""
    chain = _chain(exc)
    text = " ".join(str(e).lower() for e in chain)
    if any(word in text for word in PERMANENT_WORDS):
        return False
    network = (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)
    if any(isinstance(e, network) for e in chain):
        return True
    if any((status := http_status(e)) is not None and (status == 429 or status >= 500) for e in chain):
        return True
    return any(word in text for word in TRANSIENT_WORDS) or re.search(r"\b50[234]\b", text) is not None


def innermost(exc: BaseException) -> BaseException:
    """The cause dlt's step exceptions wrap (down to a failed job, which is kept whole)."""
    inner: BaseException = exc
    while not isinstance(inner, JOB_FAILURES) and (
        inner.__cause__ is not None or getattr(inner, "exception", None) is not None
    ):
        nxt = inner.__cause__ or getattr(inner, "exception", None)
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    return inner


def describe(spec: SourceSpec, exc: BaseException) -> str:
    """One line naming the source and the innermost cause."""
    inner = innermost(exc)
    if isinstance(inner, JOB_FAILURES):
        return refused_by_warehouse(spec, inner)
    text = " ".join(str(inner).split()) or type(inner).__name__
    if len(text) > 600:
        text = text[:600] + " ..."
    return f"source {spec.name!r}: {type(inner).__name__}: {text}"


def refused_by_warehouse(spec: SourceSpec, exc: LoadClientJobFailed | NormalizeJobFailed) -> str:
    """A job refused for a value its column's type cannot hold, by the warehouse or while dlt wrote
    the load files: the table from the job's id, the message it gave (the warehouse's names the
    value), and what happened and what to do."""
    table = str(exc.job_id).split(".", 1)[0]  # dlt's job ids: <table>.<file id>.<format>
    lines = [line.strip() for line in str(exc.failed_message).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "Error" in line and ":" in line), lines[-1] if lines else "")
    reason = reason.split(": ", 1)[1] if reason.split(": ", 1)[0].endswith(("Exception", "Error")) else reason
    # a job writing load files can carry several tables, under the name of any one of them
    where = f"source {spec.name!r}" + (f", table {table!r}" if isinstance(exc, LoadClientJobFailed) else "")
    refused = "the warehouse refused a value" if isinstance(exc, LoadClientJobFailed) else "dlt refused a value"
    return (
        f"{where}: {refused}: {' '.join(reason.split())[:400]}. "
        "dlt aborted this run's load package and the source's cursor did not move: its rows are read again "
        "next run. Fix the value at the source, or declare the column's type in "
        "sources.yml so that raw holds it (e.g. columns: {<column>: text})."
    )
