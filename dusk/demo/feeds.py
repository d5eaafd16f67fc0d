"""The demo's other source systems, advanced with the shop day by day:

- the **payments** system (a SQLite file served by :mod:`dusk.demo.payments_api`): a payment per
  new order, a few refunds a day;
- the **landing folder**: each day a marketing spend CSV (every third one gzipped) and an FX rates
  file (JSONL or Parquet, alternating), now and then with a malformed row;
- the **web event stream** on NATS JetStream (page views and add-to-cart events, now and then a
  poison message), only when NATS is reachable.

Everything is seeded: the same seed gives the same files, payments and events.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from dusk.demo.payments_api import PaymentsStore
from dusk.demo.shop import START, Shop
from dusk.settings import PROJECT_DIR, Settings
from ingestion.declaration import SourceSpec

log = logging.getLogger(__name__)

CHANNELS = ("search", "social", "email", "display")
FX = {"EUR": 1.08, "GBP": 1.27}


@dataclass
class FeedDay:
    """What the feeds did on one simulated day."""

    payments: int = 0
    files: int = 0
    events: int = 0
    stream_skipped: str | None = None


def _demo(specs: dict[str, SourceSpec], kind: str) -> SourceSpec | None:
    return next((s for s in specs.values() if s.demo and s.kind == kind), None)


class Feeds:
    """The payments store, landing folder and event stream behind the demo's sources."""

    def __init__(self, settings: Settings, specs: dict[str, SourceSpec]) -> None:
        from ingestion.files import landing_dir

        self.seed = settings.demo_seed
        self.scale = settings.demo_scale
        self.payments = PaymentsStore(settings.demo_dir / "payments.sqlite")
        files = _demo(specs, "files")
        self.landing = landing_dir(files, settings.landing_dir, PROJECT_DIR) if files else None
        self.stream = _demo(specs, "stream")

    def exists(self) -> bool:
        return self.payments.exists()

    def create(self, shop: Shop) -> FeedDay:
        """Day 0: pay for every order the new shop has, drop the first files, open the stream."""
        self.payments.create()
        with shop.engine.connect() as con:
            ids = [r[0] for r in con.execute(sa.text("select order_id from orders order by order_id"))]
        return self._day(shop, 0, START - timedelta(days=1), ids)

    def advance(self, shop: Shop, day: int, new_orders: list[int]) -> FeedDay:
        """One simulated day of the feeds (after the shop's own day)."""
        return self._day(shop, day, START + timedelta(days=day - 1), new_orders)

    def _day(self, shop: Shop, day: int, day_start: datetime, order_ids: list[int]) -> FeedDay:
        rng = random.Random(f"{self.seed}:feeds:{day}")
        result = FeedDay()
        result.payments = self.payments.record(rng, _order_totals(shop, order_ids), day_start)
        if self.landing is not None:
            result.files = self._drop_files(rng, day, day_start)
        if self.stream is not None:
            try:
                result.events = asyncio.run(self._publish(rng, day, day_start))
            except Exception as exc:  # the stream is optional in the demo
                result.stream_skipped = f"NATS not reachable ({type(exc).__name__})"
                log.info("demo events not published: %s", result.stream_skipped)
        return result

    def _drop_files(self, rng: random.Random, day: int, day_start: datetime) -> int:
        assert self.landing is not None
        self.landing.mkdir(parents=True, exist_ok=True)
        date = day_start.date().isoformat()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["spend_date", "channel", "spend", "clicks", "currency_code"])
        for channel in CHANNELS:
            spend = Decimal(rng.randrange(2_000, 90_000)) / 100
            writer.writerow([date, channel, spend, rng.randrange(10, 900), "USD"])
        if rng.random() < 0.3:
            writer.writerow([date, "affiliate", "n/a", rng.randrange(1, 50), "USD"])  # quarantined
        name = f"marketing_spend_{date}.csv"
        if day % 3 == 0:
            with gzip.open(self.landing / f"{name}.gz", "wt") as f:
                f.write(out.getvalue())
        else:
            (self.landing / name).write_text(out.getvalue())
        rates = [
            {"rate_date": date, "currency_code": c, "rate_to_usd": round(r * (1 + rng.uniform(-0.01, 0.01)), 5)}
            for c, r in FX.items()
        ]
        if day % 2 == 0:
            lines = [json.dumps(r) for r in rates]
            if rng.random() < 0.2:
                lines.append('{"rate_date": "' + date + '", "currency_code": "CHF", "rate_to_usd": }')  # broken
            (self.landing / f"fx_rates_{date}.jsonl").write_text("\n".join(lines) + "\n")
        else:
            pq.write_table(pa.Table.from_pylist(rates), self.landing / f"fx_rates_{date}.parquet")
        return 2

    async def _publish(self, rng: random.Random, day: int, day_start: datetime) -> int:
        from nats.js.errors import NotFoundError

        from ingestion.stream.reader import connect, servers_for

        assert self.stream is not None
        table = self.stream.tables[0]
        nc = await connect(servers_for(self.stream))
        try:
            js = nc.jetstream()
            stream = str(self.stream.option("stream"))
            try:
                await js.stream_info(stream)
            except NotFoundError:  # not there yet: the demo creates it
                await js.add_stream(name=stream, subjects=[t.subject for t in self.stream.tables])
            count = rng.randrange(150, 250) * self.scale
            for i in range(count):
                moment = day_start + timedelta(seconds=rng.randrange(86_400))
                body: Any = {
                    "event_id": f"{self.seed}-{day}-{i}",
                    "event_type": rng.choice(("page_view", "page_view", "page_view", "add_to_cart")),
                    "customer_id": rng.randrange(1, 1000 * self.scale),
                    "product_id": rng.randrange(1, 200 * self.scale),
                    "occurred_at": moment.isoformat() + "Z",
                }
                payload = json.dumps(body).encode()
                if rng.random() < 0.01:
                    payload = b"{truncated"  # a poison message
                await js.publish(table.subject, payload)
            return count
        finally:
            await nc.close()


def _order_totals(shop: Shop, order_ids: list[int]) -> list[dict[str, Any]]:
    if not order_ids:
        return []
    totals: list[dict[str, Any]] = []
    with shop.engine.connect() as con:
        for i in range(0, len(order_ids), 500):
            chunk = order_ids[i : i + 500]
            rows = con.execute(
                sa.text(
                    # the payment system charges the valid lines only (the shop has a few with quantity <= 0)
                    "select i.order_id, o.currency_code, sum(i.quantity * i.unit_price) "
                    "from order_items as i join orders as o on o.order_id = i.order_id "
                    "where i.order_id in :ids and i.quantity > 0 group by i.order_id, o.currency_code "
                    "order by i.order_id"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": chunk},
            )
            totals.extend({"order_id": r[0], "currency": r[1], "amount": str(r[2])} for r in rows)
    return totals


def order_ids_inserted(changes: list[tuple[str, int | str, str]]) -> list[int]:
    """The orders a shop day inserted."""
    return sorted({int(pk) for table, pk, op in changes if table == "orders" and op == "insert"})
