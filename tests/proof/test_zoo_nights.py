"""simulate-check's type zoo: N nights of the type zoo (every column type, extreme values) on the
real PostgreSQL and MariaDB servers, each night with new and changed rows, a deleted one, and one
schema change from a script that cycles through every kind (a column added, an integer and a
decimal widened, a varchar grown, a narrowing, a column dropped). After every night: the night's
status is the one the change calls for, and every live value in raw equals the source's value,
compared as text in the source's own formatting. `make simulate-check NIGHTS=30 SEED=...`."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import write_tally
from tests.helpers import ingest
from tests.ingestion import test_types
from tests.ingestion.test_types import MY_ZOO, PG_ZOO, assert_raw_equals_source, load_zoo, run_script, write_sources

zoo = test_types.zoo
"""The type zoo's fixture: an empty database on each real server, and a workspace for it."""

pytestmark = [pytest.mark.simulate]


def alter(pg: bool, column: str, to: str) -> str:
    if pg:
        return f"alter table sales.zoo alter column {column} type {to}"
    return f"alter table zoo modify {column} {to}"


def decimal(pg: bool, precision: int, scale: int) -> str:
    return f"{'numeric' if pg else 'decimal'}({precision},{scale})"


class Change:
    """One night's schema change: the statements, whether the night must fail (and with what),
    and what to do then so the next night runs (a revert, or a declaration)."""

    def __init__(
        self,
        name: str,
        sql: Callable[[bool, int], str],
        fails_with: str = "",
        then: Callable[[bool], str] | None = None,
        exclude: Callable[[int], str] | None = None,
    ) -> None:
        self.name, self.sql, self.fails_with, self.then, self.exclude = name, sql, fails_with, then, exclude


def zoo_table(pg: bool) -> str:
    return "sales.zoo" if pg else "zoo"


CHANGES = [
    # each change takes the cycle's number (1, 2, ...): a later cycle adds and drops its own column
    Change("column added", lambda pg, n: f"alter table {zoo_table(pg)} add column added_{n} varchar(20)"),
    Change("integer widened", lambda pg, n: alter(pg, "n_int", "bigint")),
    Change("decimal widened", lambda pg, n: alter(pg, "d_10_2", decimal(pg, 14, 4))),
    Change("varchar grown", lambda pg, n: alter(pg, "vc", f"varchar({30 + n})")),
    Change(
        # one integer digit less: every value still fits, so the source keeps them as they were
        "decimal narrowed",
        lambda pg, n: alter(pg, "d_10_2", decimal(pg, 13, 4)),
        fails_with="not a safe widening",
        then=lambda pg: alter(pg, "d_10_2", decimal(pg, 14, 4)),
    ),
    Change(
        "column dropped",
        lambda pg, n: f"alter table {zoo_table(pg)} drop column added_{n}",
        fails_with="were dropped from the source table",
        exclude=lambda n: f"added_{n}",
    ),
]


@pytest.mark.parametrize("shop_url", ["postgres", "mariadb"], indirect=True)
def test_zoo_nights_keep_every_value_exact(
    zoo, tmp_path: Path, seed: int, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture
) -> None:
    settings, engine = zoo
    nights = int(request.config.getoption("--nights"))
    pg = engine.dialect.name == "postgresql"
    table = zoo_table(pg)
    schema = "sales" if pg else ""
    sources = tmp_path / "sources.yml"
    load_zoo(settings, engine, sources, PG_ZOO if pg else MY_ZOO, schema=schema)
    rng = random.Random(seed)
    exclude: list[str] = []
    tally = {"nights": 0, "stopped": 0}
    for night in range(1, nights + 1):
        where = f"{engine.dialect.name} night {night} (seed {seed})"
        change = CHANGES[(night - 1) % len(CHANGES)]
        cycle = (night - 1) // len(CHANGES) + 1
        with engine.connect() as con:
            ids = [r[0] for r in con.execute(sa.text(f"select id from {table} order by id"))]
        copied = rng.choice([i for i in ids if i <= 3] or ids)
        new_id = 100 + night
        stamp = f"2026-02-{night % 28 + 1:02d} 00:00:0{night % 10}"
        columns = _columns(engine, table)
        others = ", ".join(c for c in columns if c not in ("id", "updated_at"))
        statements = [
            # a new row copying an extreme one, an update, a delete, then the schema change
            f"insert into {table} (id, updated_at, {others}) select {new_id}, '{stamp}', {others} "
            f"from {table} where id = {copied}",
            f"update {table} set updated_at = '{stamp}', vc = 'night {night % 100}' where id = {rng.choice(ids)}",
        ]
        if len(ids) > 4:
            statements.append(f"delete from {table} where id = {rng.choice([i for i in ids if i > 3])}")
        statements.append(change.sql(pg, cycle))
        run_script(engine, ";\n".join(statements))
        spec = write_sources(sources, extra=_exclude(exclude), schema=schema)
        result = ingest(spec, settings)
        if change.fails_with:
            assert not result.ok, f"{where}: {change.name} must stop the table"
            assert result.error is not None and change.fails_with in result.error, (where, result.error)
            tally["stopped"] += 1
            if change.then is not None:
                run_script(engine, change.then(pg))
            if change.exclude is not None:
                exclude.append(change.exclude(cycle))
            spec = write_sources(sources, extra=_exclude(exclude), schema=schema)
            result = ingest(spec, settings)
        assert result.ok, f"{where} ({change.name}): {result.error}"
        assert_raw_equals_source(settings, engine, "zoo", table, skip=set(exclude))
        tally["nights"] += 1
        with capsys.disabled():
            print(f"zoo {where}: {change.name}; raw = source, value by value", flush=True)
    line = (
        f"zoo-nights ({engine.dialect.name}): {tally['nights']} nights (seed {seed}), raw = source after each, "
        f"{tally['stopped']} changes stopped as they must"
    )
    write_tally(f"zoo-{engine.dialect.name}", line)


def _columns(engine: sa.Engine, table: str) -> list[str]:
    schema, _, name = table.rpartition(".")
    return [c["name"] for c in sa.inspect(engine).get_columns(name, schema=schema or None)]


def _exclude(columns: list[str]) -> str:
    return f"        exclude_columns: [{', '.join(columns)}]\n" if columns else ""
