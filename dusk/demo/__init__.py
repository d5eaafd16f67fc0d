"""The demo source systems: created on first use, advanced by the simulator."""

from __future__ import annotations

import logging

from dusk.demo.shop import Shop
from dusk.ingest import credentials_for, demo_shop_url
from dusk.settings import Settings
from ingestion.config import SourceSpec

log = logging.getLogger(__name__)


def demo_shop(settings: Settings, specs: dict[str, SourceSpec]) -> Shop:
    """The demo shop behind the source marked ``demo: true`` (its configured connection or the
    default SQLite file)."""
    demo = [s for s in specs.values() if s.demo]
    url = credentials_for(demo[0], settings) if demo else demo_shop_url(settings)
    return Shop(url, settings.demo_dir / "truth.sqlite", seed=settings.demo_seed)


def ensure_demo(settings: Settings, specs: dict[str, SourceSpec]) -> bool:
    """Create the demo shop on first use; True when it was created now."""
    settings.demo_dir.mkdir(parents=True, exist_ok=True)
    shop = demo_shop(settings, specs)
    try:
        if shop.exists():
            return False
        log.info("creating the demo shop at %s", settings.demo_dir)
        shop.create()
        return True
    finally:
        shop.dispose()
