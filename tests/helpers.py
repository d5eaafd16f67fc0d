"""Small helpers the ingestion tests share: run SQL at a source, query the warehouse."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import duckdb
import sqlalchemy as sa

from dusk.settings import Settings


def sql(engine: sa.Engine, *statements: str) -> None:
    """Run statements at the source in one transaction."""
    with engine.begin() as con:
        for s in statements:
            con.execute(sa.text(s))


def raw(settings: Settings, query: str) -> list[tuple]:
    """Rows of a query on the warehouse, opened read-only."""
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.sql(query).fetchall()


def kill_ingest_after(settings: Settings, source: str, delay: float | str, env: dict[str, str] | None = None) -> None:
    """Start ``ingest_source`` of ``source`` in a process of its own and SIGKILL it (and its
    children) after ``delay`` seconds, or, with ``delay="load"``, the moment dlt has a normalized
    load package (the load step is under way: a fixed instant would miss it on a faster machine).
    Fails if the ingest finished before the kill."""
    script = (
        "from pathlib import Path; from dusk.ingest import configure_dlt, ingest_source; "
        "from dusk.settings import Settings; from ingestion.config import load_sources; configure_dlt(); "
        f"s = Settings(Path({str(settings.data_dir)!r}), Path({str(settings.warehouse)!r}), Path('t'), "
        f"{settings.demo}, {settings.demo_seed}); "
        f"r = ingest_source(load_sources()[{source!r}], s); print(r.ok, r.error)"
    )
    normalized = settings.pipelines_dir / source / "load" / "normalized"
    before = set(normalized.glob("*")) if normalized.exists() else set()
    proc = subprocess.Popen([sys.executable, "-c", script], env=env or dict(os.environ), start_new_session=True)
    if delay == "load":
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if normalized.exists() and set(normalized.glob("*")) - before:
                break
            time.sleep(0.005)
    else:
        time.sleep(float(delay))
    assert proc.poll() is None, f"the ingest finished before the kill ({delay}); the test needs an earlier instant"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
