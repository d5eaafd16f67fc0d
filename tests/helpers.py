"""Small helpers the ingestion tests share: run SQL at a source, query the warehouse."""

from __future__ import annotations

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
