"""An API source as dlt's declarative ``rest_api`` source: a resource per table, incremental on its
cursor, records served twice kept once."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import dlt
import requests
from dlt.extract.source import DltSource
from dlt.sources.rest_api import rest_api_source

from ingestion.api.paging import GuardedCursorPaginator
from ingestion.column_types import (
    DECIMAL,
    FINER_THAN_MICROSECONDS,
    FINER_THAN_MICROSECONDS_REASON,
    dlt_column,
)
from ingestion.declaration import SourceSpec, TableSpec

INITIAL_CURSOR = "1970-01-01T00:00:00Z"
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


class ExactNumbers:
    """Refuses a record whose declared decimal or integer column holds more decimal places than
    the type keeps (dlt would coerce ``"123.456"`` to decimal(12,2) as 123.46 without a word), or a
    decimal with more digits before the point than the type holds, or a timestamp's text with a
    digit below the microsecond in any column not declared text (dlt would cut it off). The
    table stops naming the record, and is read again once the declaration is widened. Also types
    what dlt would be slow to: declared timestamps that carry their offset (see :meth:`check`)."""

    def __init__(self, spec: SourceSpec, table: TableSpec) -> None:
        self.where = f"source {spec.name!r}, table {table.name!r}"
        self.table = table
        self.scales: dict[str, int] = {}
        self.whole_digits: dict[str, int] = {}
        """Per declared decimal(p,s): p - s, the digits it holds before the point."""
        self.decimals: set[str] = set()
        self.timestamps = {name for name, declared in table.columns if declared == "timestamp"}
        self.texts = {name for name, declared in table.columns if declared == "text"}
        for name, declared in table.columns:
            decimal = DECIMAL.match(declared)
            if decimal:
                self.scales[name] = int(decimal[2])
                self.whole_digits[name] = int(decimal[1]) - int(decimal[2])
                self.decimals.add(name)
            elif declared in ("integer", "bigint"):
                self.scales[name] = 0
                self.decimals.add(name)

    def check(self, item: dict[str, Any]) -> dict[str, Any]:
        # the session reads fractions as Decimals: a declared decimal (or integer) keeps its digits; any other
        # column gets the float dlt has always inferred for a JSON fraction (double). A declared timestamp
        # is parsed here when it carries its offset (Python's parser, ~0.3 us a value): dlt's normalizer
        # parses text with pendulum at ~15 us a value, 9 s of the 300k payments of a 100x demo
        for name, value in item.items():
            # the length first: the pattern is tried only on a text long enough for a 7th digit
            long_text = isinstance(value, str) and len(value) > 26 and name not in self.texts
            if long_text and FINER_THAN_MICROSECONDS.match(value):
                key = self.table.key_text(tuple(item.get(k) for k in self.table.key_columns))
                raise ValueError(
                    f"{self.where}: record {key}: column {name}: {value!r} {FINER_THAN_MICROSECONDS_REASON}; "
                    "nothing was loaded. The records are read again next run"
                )
            if name in self.timestamps:
                item[name] = _instant(value)
            elif name not in self.decimals and isinstance(value, Decimal | dict | list):
                item[name] = _floats(value)
        for name, scale in self.scales.items():
            value = item.get(name)
            if value is None or isinstance(value, bool | int):
                continue
            try:
                number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
                exponent = number.as_tuple().exponent
                if isinstance(exponent, int) and -exponent > scale:  # trailing zeros do not count
                    exponent = number.normalize().as_tuple().exponent
            except InvalidOperation:
                continue  # not a number at all: dlt's coercion names it
            if not isinstance(exponent, int):
                continue  # NaN or infinity: the warehouse refuses it, naming it
            if -exponent > scale:
                self._refuse(item, name, value, "has more decimal places than {} holds (it would be rounded)", "scale")
            whole = self.whole_digits.get(name)
            if whole is not None and number and number.adjusted() + 1 > whole:
                self._refuse(item, name, value, "has more digits before the point than {} holds", "precision")
        return item

    def _refuse(self, item: dict[str, Any], name: str, value: Any, problem: str, wider: str) -> None:
        key = self.table.key_text(tuple(item.get(k) for k in self.table.key_columns))
        declared = f"its declared type {dict(self.table.columns)[name]}"
        raise ValueError(
            f"{self.where}: record {key}: column {name}: {value!r} {problem.format(declared)}; "
            f"nothing was loaded. Declare a wider {wider} in sources.yml: the records are read again next run"
        )


def _instant(value: Any) -> Any:
    """An ISO 8601 text with a UTC offset as the aware datetime it names (the same instant dlt's
    coercion gives it), else ``value`` as is, for dlt to coerce or refuse."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
            return moment.astimezone(UTC) if moment.tzinfo is not None else value
        except (ValueError, OverflowError):
            return value
    return value


def _floats(value: Any) -> Any:
    """``value`` with its Decimals (nested ones too) as floats."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return value


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
    exact: dict[str, ExactNumbers] = {}
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
        exact[table.name] = ExactNumbers(spec, table)
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
        "paginator": GuardedCursorPaginator(spec.name, int(spec.option("max_pages"))),
        "session": session,
    }
    if token:
        client["auth"] = {"type": "bearer", "token": token}
    source = rest_api_source({"client": client, "resources": resources}, name=spec.name)  # type: ignore[typeddict-item]
    source.max_table_nesting = 0
    for name, numbers in exact.items():
        resource = source.resources[name]
        # after dlt's incremental step, which add_map would put them before (it keeps itself
        # last): only the records this run loads are stamped, compared, checked and typed, and
        # the incremental and the repeats compare the cursor as the API served it (the check
        # types it last). dlt has no public count of a resource's steps.
        at = len(resource._pipe)
        if name in repeats:
            resource.add_map(repeats[name].stamp, insert_at=at).add_filter(repeats[name].keep, insert_at=at + 1)
            at += 2
        resource.add_map(numbers.check, insert_at=at)
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
