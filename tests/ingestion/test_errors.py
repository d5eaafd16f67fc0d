"""The one rule for "worth another attempt", for a whole source and for one API request."""

from __future__ import annotations

import requests

from ingestion.api.session import CircuitOpenError, _retried
from ingestion.errors import is_transient


def test_transient_and_permanent_errors_are_told_apart() -> None:
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert is_transient(RuntimeError("GET http://api/v1/x -> 503"))
    assert is_transient(RuntimeError("circuit breaker open after 6 failed attempts in a row"))
    assert not is_transient(RuntimeError('password authentication failed for user "x"'))
    assert not is_transient(RuntimeError("source 'shop', table 'orders': 3 duplicate value(s) of primary key"))
    assert not is_transient(RuntimeError("order 5031 has no lines"))


def test_http_answers_are_transient_by_status_and_the_open_breaker_is_final_for_a_request() -> None:
    def answered(status: int) -> requests.HTTPError:
        response = requests.Response()
        response.status_code = status
        return requests.HTTPError(f"{status} for url: http://127.0.0.1/x", response=response)

    assert is_transient(answered(429)) and is_transient(answered(500)) and is_transient(requests.Timeout("slow"))
    assert not is_transient(answered(401)) and not is_transient(answered(404))
    breaker = CircuitOpenError("source 'p': circuit breaker open after 8 failed attempts in a row")
    assert is_transient(breaker)  # the whole source: worth another attempt later
    assert not _retried(breaker) and _retried(answered(503))  # one request: the breaker stops it
