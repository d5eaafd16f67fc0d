"""Paging that cannot hold the night forever: dlt's cursor paginator with a guard.

An API whose ``next_cursor`` leads back to a page already read (a bug on its side, or a cursor
reset while the night pages) would page without end, and a runaway table without a bound holds
the run lock for hours. dlt's paginator has neither check, so this subclass adds both; dlt's
client copies the paginator for every table, so each table counts its own pages and cursors.
"""

from __future__ import annotations

from typing import Any

from dlt.sources.helpers.rest_client.client import sanitize_url
from dlt.sources.helpers.rest_client.paginators import JSONResponseCursorPaginator
from requests import Response


class PagingError(RuntimeError):
    """An API's paging went wrong: the table stops, nothing of it is loaded, the cursor stays."""


class GuardedCursorPaginator(JSONResponseCursorPaginator):
    """The cursor paginator (``next_cursor`` in the body, ``cursor`` parameter) that stops a table
    whose next cursor was already given in this run, or that has more than ``max_pages`` pages."""

    def __init__(self, source: str, max_pages: int) -> None:
        super().__init__(cursor_path="next_cursor", cursor_param="cursor")
        self.source = source
        self.max_pages = max_pages
        self.pages = 0
        self.seen: set[str] = set()

    def update_state(self, response: Response, data: list[Any] | None = None) -> None:
        super().update_state(response, data)
        self.pages += 1
        where = f"source {self.source!r}: {response.request.method} {sanitize_url(response.request.url or '')}"
        reference = self._next_reference
        if reference is not None and self.has_next_page:
            if str(reference) in self.seen:
                raise PagingError(
                    f"{where} (page {self.pages}) gave the next cursor {str(reference)[:80]!r} a second time: its "
                    "pages lead in a circle. Nothing of the table was loaded and its cursor did not move. Fix: the "
                    "API's paging (ask its owner); the next night tries again."
                )
            self.seen.add(str(reference))
            if self.pages >= self.max_pages:
                raise PagingError(
                    f"{where}: still more pages after {self.pages} (max_pages). Nothing of the table was loaded and "
                    "its cursor did not move. Fix: if the table is that large, raise api.max_pages in sources.yml "
                    "(or page_size); otherwise the API pages without end."
                )
