"""A hung source cannot hold the night: a real PostgreSQL query stuck behind a lock is cancelled by
the server after the source's statement_timeout, and the source fails naming itself, its table
and the timeout, with nothing loaded and its state unmoved."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dusk.settings import Settings
from ingestion.declaration import load_sources
from ingestion.dlt_settings import configure_dlt
from tests.conftest import server_database
from tests.helpers import ingest


def test_a_query_stuck_behind_a_lock_is_cancelled_after_the_statement_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_dlt()
    with server_database("postgres") as url:
        engine = sa.create_engine(url)
        with engine.begin() as con:
            con.exec_driver_sql("create table accounts (id int primary key, updated_at timestamp)")
            con.exec_driver_sql("insert into accounts values (1, '2026-01-01')")
        path = tmp_path / "sources.yml"
        path.write_text(
            "sources:\n  crm:\n    kind: database\n    database: {statement_timeout: 2, connect_timeout: 5}\n"
            "    tables:\n      accounts: {primary_key: id, cursor: updated_at}\n"
        )
        spec = load_sources(path)["crm"]
        monkeypatch.setenv("SOURCES__CRM__CREDENTIALS", url)
        settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "t", demo=False, demo_seed=1)
        holder = engine.connect()
        try:
            holder.exec_driver_sql("begin")
            holder.exec_driver_sql("lock table accounts in access exclusive mode")  # a migration, a vacuum full
            started = time.monotonic()
            result = ingest(spec, settings)
            waited = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
        assert not result.ok
        assert "source 'crm'" in (result.error or "") and "statement timeout" in (result.error or ""), result.error
        assert waited < 120  # cancelled by the server, not waited out (the lock was held for good)
        again = ingest(spec, settings)  # once the lock is gone the table loads
        assert again.ok, again.error
        assert again.tables[0].extracted == 1
        engine.dispose()


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers (a half-open
    link, a hung proxy, a server stuck before its greeting). Yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        listener.close()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql+pymysql"])
def test_a_server_that_accepts_and_never_answers_is_given_up_after_the_connect_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    configure_dlt()
    path = tmp_path / "sources.yml"
    path.write_text(
        "sources:\n  crm:\n    kind: database\n    database: {statement_timeout: 3, connect_timeout: 2}\n"
        "    tables:\n      accounts: {primary_key: id, cursor: updated_at}\n"
    )
    spec = load_sources(path)["crm"]
    settings = Settings(tmp_path, tmp_path / "wh.duckdb", tmp_path / "t", demo=False, demo_seed=1)
    with silent_server() as port:
        monkeypatch.setenv("SOURCES__CRM__CREDENTIALS", f"{scheme}://dusk@127.0.0.1:{port}/crm")
        started = time.monotonic()
        result = ingest(spec, settings)
        waited = time.monotonic() - started
    assert not result.ok
    assert "source 'crm'" in (result.error or ""), result.error
    assert "timeout" in (result.error or "").lower() or "timed out" in (result.error or ""), result.error
    assert waited < 60, waited  # given up by the client, not by the operating system's TCP timeout
