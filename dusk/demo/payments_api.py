"""The demo shop's payments API: a real HTTP server (Starlette on uvicorn) over a SQLite file.

``GET /v1/payments`` needs ``Authorization: Bearer <token>`` and returns
``{"data": [...], "next_cursor": "..."}`` ordered by ``(updated_at, payment_id)``: ``updated_since``
filters (inclusive), ``cursor`` continues after the last row of the previous page (opaque), and
``limit`` sets the page size (at most 500).

It misbehaves on purpose, as real APIs do: a :class:`Chaos` script makes the next requests answer
429 with ``Retry-After``, 500/503, or answer only after a delay (past a client's timeout). The demo
runs with a little random chaos; tests script exact sequences.
"""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import socket
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SCHEMA = """
create table if not exists payments (
    payment_id integer primary key,
    order_id integer not null,
    amount text not null,
    currency text not null,
    method text not null,
    status text not null,
    created_at text not null,
    updated_at text not null
);
create index if not exists payments_updated on payments (updated_at, payment_id);
"""
METHODS = ("card", "paypal", "bank_transfer", "gift_card")
MAX_LIMIT = 500


@dataclass
class Chaos:
    """Faults the server plays, one per request: a script first, then random ones."""

    script: deque[str] = field(default_factory=deque)
    """Next requests' faults: ``429``, ``500``, ``503``, ``slow``, ``badjson`` (a 200 whose body
    is cut off) or ``ok``."""
    random_rate: float = 0.0
    """Share of the other requests that get a random fault (429 or 503)."""
    retry_after: int = 1
    slow_seconds: float = 3.0
    seed: int = 0
    requests: int = 0
    faults: list[str] = field(default_factory=list)
    _random: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._random.seed(self.seed)

    def next_fault(self) -> str:
        self.requests += 1
        if self.script:
            fault = self.script.popleft()
        elif self.random_rate and self._random.random() < self.random_rate:
            fault = self._random.choice(("429", "503"))
        else:
            fault = "ok"
        if fault != "ok":
            self.faults.append(fault)
        return fault


def _encode(updated_at: str, payment_id: int) -> str:
    return base64.urlsafe_b64encode(f"{updated_at}|{payment_id}".encode()).decode()


def _decode(cursor: str) -> tuple[str, int]:
    updated_at, payment_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    return updated_at, int(payment_id)


def make_app(db_path: Path, token: str, chaos: Chaos) -> Starlette:
    """The ASGI app serving ``db_path``'s payments to requests carrying ``token``."""

    async def payments(request: Request) -> Response:
        fault = chaos.next_fault()
        if fault == "slow":
            await asyncio.sleep(chaos.slow_seconds)
        elif fault == "429":
            return JSONResponse(
                {"error": "rate limited"}, status_code=429, headers={"Retry-After": str(chaos.retry_after)}
            )
        elif fault in ("500", "503"):
            return JSONResponse({"error": "try again later"}, status_code=int(fault))
        elif fault == "badjson":
            return Response('{"data": [{"payment_id": 1, "amount": ', media_type="application/json")
        if request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        params = request.query_params
        try:
            limit = min(int(params.get("limit", 100)), MAX_LIMIT)
            since = params.get("updated_since")
            after = _decode(params["cursor"]) if params.get("cursor") else None
            if since:
                datetime.fromisoformat(since.replace("Z", "+00:00"))
        except (ValueError, KeyError) as exc:
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
        # one condition, whichever implies the other: with both, SQLite walks the index from
        # updated_since and filters the rest, so each page costs as much as the pages before it
        where, args = "", list[Any]()
        if after and (not since or after[0] >= _iso(since)):
            where, args = " where (updated_at, payment_id) > (?, ?)", list(after)
        elif since:
            where, args = " where updated_at >= ?", [_iso(since)]
        sql = "select * from payments" + where
        sql += " order by updated_at, payment_id limit ?"
        with sqlite3.connect(db_path) as con:
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute(sql, [*args, limit + 1])]
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode(rows[-1]["updated_at"], rows[-1]["payment_id"]) if more else None
        return JSONResponse({"data": rows, "next_cursor": next_cursor})

    return Starlette(routes=[Route("/v1/payments", payments)])


def _iso(value: str) -> str:
    """A timestamp as the store writes it (UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``)."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return stamp(moment)


def stamp(moment: datetime) -> str:
    """How the store writes a (naive UTC) time."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PaymentsServer:
    """The payments API on 127.0.0.1, served by uvicorn in a background thread."""

    def __init__(self, db_path: Path, token: str | None = None, chaos: Chaos | None = None) -> None:
        self.db_path = db_path
        self.token = token or secrets.token_urlsafe(24)
        self.chaos = chaos or Chaos()
        self.port = free_port()
        config = uvicorn.Config(
            make_app(db_path, self.token, self.chaos),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            # uvicorn's own logging setup (dictConfig) would close every handler of the process,
            # the run's log file included; its loggers propagate to the runner's handlers instead
            log_config=None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="payments-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/"

    def start(self) -> PaymentsServer:
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        raise RuntimeError(f"the payments API did not start on port {self.port}")

    def stop(self, wait: bool = True) -> None:
        """Tell the server to end; with ``wait``, until it has. uvicorn notices at its next tick
        and then closes its connections: ~0.2 s, which a night need not wait for (the thread is
        a daemon, on a port of its own)."""
        self._server.should_exit = True
        if wait:
            self._thread.join(timeout=10)


@contextmanager
def serving(db_path: Path, token: str | None = None, chaos: Chaos | None = None) -> Iterator[PaymentsServer]:
    """Run the payments API for the duration of a ``with`` block."""
    server = PaymentsServer(db_path, token, chaos).start()
    try:
        yield server
    finally:
        server.stop()


class PaymentsStore:
    """The payments system's own database, advanced by the shop simulator."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def create(self) -> None:
        with sqlite3.connect(self.db_path) as con:
            con.executescript(SCHEMA)

    def exists(self) -> bool:
        return self.db_path.exists()

    def record(self, rng: random.Random, orders: list[dict[str, Any]], day_start: datetime) -> int:
        """Pay for new orders and refund a few older payments, with times inside the day.
        Returns the number of payments written."""
        written = 0
        with sqlite3.connect(self.db_path) as con:
            con.executescript(SCHEMA)
            (next_id,) = con.execute("select coalesce(max(payment_id), 0) + 1 from payments").fetchone()
            for order in orders:
                moment = day_start + timedelta(seconds=rng.randrange(86_400))
                con.execute(
                    "insert into payments values (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        next_id,
                        order["order_id"],
                        str(Decimal(order["amount"]).quantize(Decimal("0.01"))),
                        order.get("currency", "USD"),
                        rng.choice(METHODS),
                        "captured",
                        stamp(moment),
                        stamp(moment),
                    ),
                )
                next_id += 1
                written += 1
            refunds = con.execute(
                "select payment_id from payments where status = 'captured' and created_at < ? order by payment_id",
                (stamp(day_start),),
            ).fetchall()
            for (payment_id,) in rng.sample(refunds, min(len(refunds), rng.randint(0, 3))):
                moment = day_start + timedelta(seconds=rng.randrange(86_400))
                con.execute(
                    "update payments set status = 'refunded', updated_at = ? where payment_id = ?",
                    (stamp(moment), payment_id),
                )
                written += 1
        return written
