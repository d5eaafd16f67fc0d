"""The demo source systems: created on first use, advanced by the simulator.

The shop's OLTP database, and beside it (:mod:`dusk.demo.feeds`) the payments API's store, the
landing folder and the web event stream. ``serve_payments_api`` runs the payments API for the
duration of a night in demo mode.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from dusk.demo.feeds import FeedDay, Feeds, order_ids_inserted
from dusk.demo.shop import DayLog, Shop
from dusk.ingest import credentials_for, demo_shop_url
from dusk.settings import Settings
from ingestion.config import SourceSpec

log = logging.getLogger(__name__)


def demo_shop(settings: Settings, specs: dict[str, SourceSpec]) -> Shop:
    """The demo shop behind the database source marked ``demo: true`` (its configured connection
    or the default SQLite file)."""
    demo = [s for s in specs.values() if s.demo and s.kind == "database"]
    url = credentials_for(demo[0], settings) if demo else demo_shop_url(settings)
    return Shop(url, settings.demo_dir / "truth.sqlite", seed=settings.demo_seed)


def ensure_demo(settings: Settings, specs: dict[str, SourceSpec]) -> bool:
    """Create the demo shop and its feeds on first use; True when it was created now."""
    settings.demo_dir.mkdir(parents=True, exist_ok=True)
    shop = demo_shop(settings, specs)
    feeds = Feeds(settings, specs)
    try:
        created = False
        try:
            if not shop.exists():
                log.info("creating the demo shop at %s", shop.safe_url)
                shop.create()
                created = True
            else:
                for table in shop.add_missing_tables():
                    log.info("demo shop at %s: added table %s (new in this version)", shop.safe_url, table)
        except Exception as exc:
            name = next((s.name for s in specs.values() if s.demo and s.kind == "database"), "shop")
            raise RuntimeError(f"source {name!r}: the demo shop at {shop.safe_url} cannot be created: {exc}") from exc
        if not feeds.exists():
            feeds.create(shop)
            created = True
        return created
    finally:
        shop.dispose()


def simulate(settings: Settings, specs: dict[str, SourceSpec], days: int) -> list[tuple[DayLog, FeedDay]]:
    """Advance the shop and its feeds by ``days`` days (creating them first if needed)."""
    ensure_demo(settings, specs)
    shop = demo_shop(settings, specs)
    feeds = Feeds(settings, specs)
    try:
        return [(day, feeds.advance(shop, day.day, order_ids_inserted(day.changes))) for day in shop.simulate(days)]
    finally:
        shop.dispose()


@contextmanager
def serve_payments_api(settings: Settings, specs: dict[str, SourceSpec]) -> Iterator[str | None]:
    """In demo mode, run the payments API (with a little random misbehaviour) for the demo API
    source that has no base URL of its own, and point the source at it through the environment
    (``SOURCES__<NAME>__BASE_URL`` and a fresh ``..._TOKEN``). Yields the URL, or None."""
    from dusk.demo.payments_api import Chaos, PaymentsServer

    spec = next((s for s in specs.values() if s.demo and s.kind == "api"), None)
    prefix = f"SOURCES__{spec.name.upper()}__" if spec else ""
    if spec is None or spec.option("base_url") or os.environ.get(prefix + "BASE_URL"):
        yield None
        return
    token = os.environ.get(prefix + "TOKEN")
    chaos = Chaos(random_rate=0.05, retry_after=1, seed=settings.demo_seed)
    server = PaymentsServer(settings.demo_dir / "payments.sqlite", token=token, chaos=chaos).start()
    saved = {k: os.environ.get(k) for k in (prefix + "BASE_URL", prefix + "TOKEN")}
    os.environ[prefix + "BASE_URL"] = server.url
    os.environ[prefix + "TOKEN"] = server.token
    try:
        yield server.url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
