"""A database table whose primary key is several columns (order lines, memberships, bridge
tables), on SQLite, PostgreSQL and MariaDB: incremental merge, key-diff deletes, late rows and
ties at the watermark, a key back after its deletion, and NULL or duplicate keys named by every
key column. Each test creates its own database (or file) and removes it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dusk.settings import Settings
from ingestion.declaration import SourceSpec, load_sources
from ingestion.dlt_settings import configure_dlt
from ingestion.result import SourceResult
from ingestion.run import make_pipeline
from tests.conftest import SERVERS, server_database
from tests.helpers import ingest, raw, sql, target

SOURCES = """sources:
  club:
    kind: database
    tables:
      memberships:
        primary_key: [group_id, member_id]
        cursor: updated_at
        deletes: key_diff
"""

CREATE = (
    "create table memberships (group_id integer not null, member_id varchar(10) not null, "
    "role varchar(20) not null, updated_at timestamp not null, primary key (group_id, member_id))"
)


@pytest.fixture(params=["sqlite", *sorted(SERVERS)])
def club(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, SourceSpec, sa.Engine]]:
    """The ``club`` source on SQLite and on each real server, its table created and loaded once."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'club.sqlite'}"
        else:
            url = stack.enter_context(server_database(request.param))
        yield from _club(url, tmp_path, monkeypatch)


def _club(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, SourceSpec, sa.Engine]]:
    configure_dlt()
    monkeypatch.setenv("SOURCES__CLUB__CREDENTIALS", url)
    (tmp_path / "sources.yml").write_text(SOURCES)
    spec = load_sources(tmp_path / "sources.yml")["club"]
    engine = sa.create_engine(url)
    sql(
        engine,
        CREATE,
        "insert into memberships values (1, 'a', 'owner', '2026-01-01 10:00:00'), "
        "(1, 'b', 'member', '2026-01-01 10:00:00'), (2, 'a', 'member', '2026-01-01 11:00:00'), "
        "(2, 'b', 'admin', '2026-01-01 12:00:00')",
    )
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "target", demo=False, demo_seed=1)
    first = ingest(spec, settings)
    assert first.ok, first.error
    yield settings, spec, engine
    engine.dispose()


def counts(result: SourceResult, table: str = "memberships") -> tuple[int, int]:
    assert result.ok, result.error
    t = {s.table: s for s in result.tables}[table]
    return t.extracted, t.deleted


def raw_rows(settings: Settings) -> list[tuple]:
    return raw(
        settings,
        "select group_id, member_id, role, _is_deleted, _restored_at is not null from raw_club.memberships "
        "order by group_id, member_id",
    )


def source_rows(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as con:
        return [
            tuple(r) for r in con.execute(sa.text("select group_id, member_id, role from memberships order by 1, 2"))
        ]


def test_a_composite_key_merges_deletes_and_restores(club) -> None:
    settings, spec, engine = club
    assert raw_rows(settings) == [(g, m, r, False, False) for g, m, r in source_rows(engine)]
    sql(
        engine,
        "update memberships set role = 'admin', updated_at = '2026-01-02 09:00:00' "
        "where group_id = 1 and member_id = 'b'",
        "delete from memberships where group_id = 2 and member_id = 'a'",
        "insert into memberships values (3, 'a', 'member', '2026-01-02 10:00:00')",
        # committed late, below the watermark: found by key-diff, read by its key
        "insert into memberships values (1, 'c', 'member', '2025-12-01 00:00:00')",
        # a tie at the watermark: (2, 'b') is already in raw at that instant, (2, 'c') is new
        "insert into memberships values (2, 'c', 'member', '2026-01-01 12:00:00')",
    )
    assert counts(ingest(spec, settings)) == (4, 1)
    live = [(g, m, r) for g, m, r, deleted, _ in raw_rows(settings) if not deleted]
    assert live == source_rows(engine)
    assert (2, "a", "member", True, False) in raw_rows(settings)
    # the deleted membership comes back as it was: its updated_at is older than the watermark
    sql(engine, "insert into memberships values (2, 'a', 'member', '2026-01-01 11:00:00')")
    assert counts(ingest(spec, settings)) == (1, 0)
    assert (2, "a", "member", False, True) in raw_rows(settings)
    assert counts(ingest(spec, settings)) == (0, 0)
    assert raw(settings, "select count(*) - count(distinct (group_id, member_id)) from raw_club.memberships") == [(0,)]


@pytest.mark.badinput
def test_null_or_duplicate_composite_keys_name_every_key_column(club) -> None:
    settings, spec, engine = club
    sql(
        engine,
        "create table loose (group_id integer, member_id varchar(10), role varchar(20), updated_at timestamp null)",
        "insert into loose values (1, 'a', 'x', '2026-01-01 00:00:00'), (1, 'a', 'y', '2026-01-01 00:00:01'), "
        "(1, 'b', 'z', '2026-01-01 00:00:02')",
    )
    (Path(settings.data_dir) / "sources.yml").write_text(
        SOURCES + "      loose:\n        primary_key: [group_id, member_id]\n        cursor: updated_at\n"
    )
    spec = load_sources(Path(settings.data_dir) / "sources.yml")["club"]
    result = ingest(spec, settings)
    assert not result.ok
    assert result.error is not None
    assert "source 'club', table 'loose'" in result.error
    assert "1 duplicate value(s) of primary key '(group_id, member_id)', e.g. group_id=1, member_id='a'" in result.error
    sql(engine, "delete from loose", "insert into loose values (1, null, 'x', '2026-01-01 00:00:00')")
    result = ingest(spec, settings)
    assert not result.ok and result.error is not None
    assert "1 row(s) with a NULL primary key '(group_id, member_id)'" in result.error


def declare_key(settings: Settings, key: str) -> SourceSpec:
    (Path(settings.data_dir) / "sources.yml").write_text(SOURCES.replace("[group_id, member_id]", key))
    return load_sources(Path(settings.data_dir) / "sources.yml")["club"]


@pytest.mark.badinput
@pytest.mark.parametrize("club", ["sqlite"], indirect=True)
def test_a_changed_key_is_applied_when_raw_holds_it_and_refused_when_not(club) -> None:
    """A key that adds a column is applied (raw's rows are unique on it), and dlt's schema then
    merges on exactly that key; a key raw's rows repeat stops the table naming both keys."""
    settings = club[0]
    finer = ingest(declare_key(settings, "[group_id, member_id, role]"), settings)
    assert finer.ok, finer.error
    assert finer.schema_changes == [
        "memberships: primary key changed (group_id, member_id) -> (group_id, member_id, role)"
    ]
    pipeline = make_pipeline(declare_key(settings, "[group_id, member_id, role]"), target(settings))
    columns = pipeline.default_schema.tables["memberships"]["columns"]
    assert sorted(n for n, c in columns.items() if c.get("primary_key")) == ["group_id", "member_id", "role"]
    coarser = ingest(declare_key(settings, "[member_id]"), settings)
    assert not coarser.ok and coarser.error is not None
    assert "the declared primary key changed from (group_id, member_id, role) to (member_id)" in coarser.error
    assert "raw holds 2 value(s) of the new key on several rows" in coarser.error
    back = ingest(declare_key(settings, "[group_id, member_id]"), settings)
    assert back.ok, back.error
