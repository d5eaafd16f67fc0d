"""The demo source systems: created on first use, advanced by the simulator.

The shop's OLTP database, and beside it (:mod:`dusk.demo.feeds`) the payments API's store, the
landing folder and the web event stream. ``serve_payments_api`` runs the payments API for the
duration of a night in demo mode. The demo's endpoints reach ingestion as explicit
:class:`ingestion.run.Connection` values (nothing is written into the environment).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from dusk.demo.feeds import FeedDay, Feeds, order_ids_inserted
from dusk.demo.shop import DayLog, Shop
from dusk.settings import Settings
from ingestion.declaration import SourceSpec
from ingestion.run import Connection

log = logging.getLogger(__name__)


def demo_shop_url(settings: Settings) -> str:
    """The demo shop's SQLite database."""
    return f"sqlite:///{settings.demo_dir / 'shop.sqlite'}"


def _configured_url(spec: SourceSpec) -> str | None:
    from ingestion.database import credentials

    try:
        return credentials(spec, Connection())
    except RuntimeError:
        return None


def shop_connections(settings: Settings, specs: dict[str, SourceSpec]) -> dict[str, Connection]:
    """The demo database source's connection when none is configured: the demo's SQLite file."""
    return {
        s.name: Connection(credentials=demo_shop_url(settings))
        for s in specs.values()
        if s.demo and s.kind == "database" and _configured_url(s) is None
    }


def demo_shop(settings: Settings, specs: dict[str, SourceSpec]) -> Shop:
    """The demo shop behind the database source marked ``demo: true`` (its configured connection
    or the default SQLite file)."""
    demo = [s for s in specs.values() if s.demo and s.kind == "database"]
    url = (_configured_url(demo[0]) if demo else None) or demo_shop_url(settings)
    return Shop(url, settings.demo_dir / "truth.sqlite", seed=settings.demo_seed, scale=settings.demo_scale)


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
def serve_payments_api(settings: Settings, specs: dict[str, SourceSpec]) -> Iterator[dict[str, Connection]]:
    """In demo mode, run the payments API (with a little random misbehaviour) for the demo API
    source that has no base URL of its own, for the duration of the block. Yields the source's
    connection to it (the URL, and the configured token or the server's fresh one), or nothing."""
    from dusk.demo.payments_api import Chaos, PaymentsServer
    from ingestion.api import endpoint_settings

    spec = next((s for s in specs.values() if s.demo and s.kind == "api"), None)
    if spec is None:
        yield {}
        return
    base_url, token = endpoint_settings(spec)
    if base_url:
        yield {}
        return
    # 5 % of a 1x demo's requests, and as many faults a night at any scale: they stand for an
    # API's hiccups, not its load (at 5 % of every request, a 100x first night's ~600 requests
    # waited ~20 s for them)
    chaos = Chaos(random_rate=0.05 / settings.demo_scale, retry_after=1, seed=settings.demo_seed)
    server = PaymentsServer(settings.demo_dir / "payments.sqlite", token=token, chaos=chaos).start()
    try:
        yield {spec.name: Connection(base_url=server.url, token=server.token)}
    finally:
        server.stop(wait=False)  # the night goes on while it closes (~0.2 s)
