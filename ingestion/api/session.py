"""The HTTP session every request of an API source goes through: a timeout, retries with backoff
and jitter that honour ``Retry-After``, and a circuit breaker."""

from __future__ import annotations

import logging
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
        if header and header.strip().isdigit():
            return min(float(header), self.max_backoff)
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
