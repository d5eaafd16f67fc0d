"""The HTTP session every request of an API source goes through: a timeout, retries with backoff
and jitter that honour ``Retry-After``, and a circuit breaker."""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import tenacity
from dlt.sources.helpers.rest_client.client import sanitize_url

from ingestion.declaration import SourceSpec
from ingestion.errors import http_status, is_transient

log = logging.getLogger(__name__)


class CircuitOpenError(RuntimeError):
    """Too many failures in a row: the source stops calling the API for this run."""


def _retried(exc: BaseException) -> bool:
    """A request worth another attempt: transient (ingestion's one rule), unless the breaker is open."""
    return not isinstance(exc, CircuitOpenError) and is_transient(exc)


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
        wait = retry_after(header) if header else None
        if wait is not None:
            return min(wait, self.max_backoff)
        return float(self._jitter(state))

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_retried),
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
            if is_transient(exc):
                self.failures_in_a_row += 1
                status = http_status(exc)
                self.last_failure = f"{endpoint} -> {status if status else type(exc).__name__}"
                log.warning("source=%s attempt failed: %s", self.source, self.last_failure)
            raise
        self.failures_in_a_row = 0
        # a JSON fraction as written (a Decimal), never a float that would round its 16th digit:
        # dlt's client reads every page through response.json()
        response.json = functools.partial(_exact_json, response)  # type: ignore[method-assign]
        if request.method == "GET":
            _check_json(self.source, endpoint, response)
        return response


def _exact_json(response: requests.Response, **kwargs: Any) -> Any:
    return requests.Response.json(response, **{"parse_float": Decimal, **kwargs})


def retry_after(header: str, now: datetime | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks for, in either of its forms (RFC 9110: a number of
    seconds, or an HTTP date); None when it is neither."""
    text = header.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # an HTTP date is in GMT
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


class NotJsonError(RuntimeError):
    """A 200 answer an API source cannot read: not JSON, or JSON that does not parse."""


def _check_json(source: str, endpoint: str, response: requests.Response) -> None:
    """Fail, naming the endpoint, the status and the content type, when an answer is not JSON
    (a login page, a proxy's error page, a truncated body), instead of a bare decode error."""
    kind = response.headers.get("Content-Type", "")
    if "json" not in kind.lower():
        raise NotJsonError(
            f"source {source!r}: {endpoint} answered {response.status_code} with content type {kind or 'none'!r}, "
            "not JSON. Check the source's base_url (a proxy or a login page answers like this)."
        )
    try:
        response.json()
    except ValueError as exc:
        raise NotJsonError(
            f"source {source!r}: {endpoint} answered {response.status_code} ({kind}) with a body that is not valid "
            f"JSON ({exc}; {len(response.content)} bytes). The cursor did not move: the next night reads it again."
        ) from None


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
