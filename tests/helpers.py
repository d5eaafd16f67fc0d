"""Small helpers the tests share: ingest a source the way the night does, run SQL at a source,
query the warehouse."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import psycopg
import sqlalchemy as sa

from dusk.demo.shop import PRIMARY_KEYS
from dusk.record import UNCHANGED
from dusk.settings import PostgresSettings, Settings
from dusk.warehouse import open_warehouse

if TYPE_CHECKING:
    from tests.conftest import Workspace
from ingestion.database.scan import load_extension
from ingestion.declaration import SourceSpec, load_sources
from ingestion.result import SourceResult
from ingestion.run import Connection, Target, ingest_source
from tests.conftest import _service_missing

SHOP_KEYS = {table: ", ".join(columns) for table, columns in PRIMARY_KEYS.items()}
"""Each demo shop table's key columns as a SELECT list (composite keys: several columns)."""


LEDGER_STEPS = "(run_id, step, target, status, attempts, seconds)"
PASSED = ("pass", UNCHANGED)
"""A data test's statuses that mean it holds tonight: it ran and passed, or a state-aware night
left it, and what it reads, as they were when it passed."""
"""A ledger step row's columns but the dbt step's ``sql_seconds``, for rows a test writes."""


def sources() -> dict[str, SourceSpec]:
    """The sources of the declaration the test set (DUSK_SOURCES_FILE), else ingestion/sources.yml."""
    path = os.environ.get("DUSK_SOURCES_FILE")
    return load_sources(Path(path) if path else None)


def target(settings: Settings) -> Target:
    """Where ingestion lands a source: the test's warehouse (a DuckDB file, or a PostgreSQL
    database when ``settings.target`` says so), as the night configures it."""
    return open_warehouse(settings).target()


@contextmanager
def on_engine(settings: Settings, engine: str) -> Iterator[Settings]:
    """``settings`` with its warehouse on ``engine``: as they are for ``duckdb``; for ``postgres``
    a database of the test's own on the local server (created as the night's first step does),
    dropped afterwards."""
    if engine != "postgres":
        yield settings
        return
    settings = replace(
        settings, target="postgres", postgres=PostgresSettings(database=f"dusk_test_wh_{uuid.uuid4().hex[:10]}")
    )
    try:
        with open_warehouse(settings).connect():
            pass
    except psycopg.OperationalError as exc:
        _service_missing(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    try:
        yield settings
    finally:
        with psycopg.connect(settings.postgres.url("postgres"), autocommit=True) as admin:
            admin.execute(f"drop database if exists {settings.postgres.database} with (force)")


def connection(spec: SourceSpec, settings: Settings) -> Connection:
    """The demo shop's SQLite file for a demo database source that has no configured connection."""
    configured = os.environ.get(f"SOURCES__{spec.name.upper()}__CREDENTIALS")
    if spec.demo and spec.kind == "database" and not configured:
        return Connection(credentials=f"sqlite:///{settings.demo_dir / 'shop.sqlite'}")
    return Connection()


def ingest(spec: SourceSpec, settings: Settings, only: set[str] | None = None, **kwargs: Any) -> SourceResult:
    """Ingest one source into the test's warehouse (ingestion's entry point, as the night calls it)."""
    where, how = target(settings), connection(spec, settings)
    return ingest_source(spec, where, how, only=only, detected_at=settings.detected_at, **kwargs)


def key_set(rows: Iterable[Sequence[object]]) -> set[object]:
    """Keys of selected rows as the demo's truth file records them (a composite one as ``12|AMS``)."""
    return {r[0] if len(r) == 1 else "|".join(str(v) for v in r) for r in rows}


def sql(engine: sa.Engine, *statements: str) -> None:
    """Run statements at the source in one transaction."""
    with engine.begin() as con:
        for s in statements:
            con.execute(sa.text(s))


def raw(settings: Settings, query: str) -> list[tuple]:
    """Rows of a (DuckDB SQL) query on the warehouse, opened read-only: the DuckDB file, or the
    PostgreSQL database attached through DuckDB's postgres extension (times in UTC)."""
    if settings.target != "postgres":
        with duckdb.connect(str(settings.warehouse), read_only=True) as con:
            return con.sql(query).fetchall()
    pg = settings.postgres
    with duckdb.connect() as con:
        load_extension(con, "duckdb_extension_postgres_scanner")
        con.execute("set TimeZone = 'UTC'")
        dsn = f"host={pg.host} port={pg.port} user={pg.user} dbname={pg.database}"
        con.execute(f"attach '{dsn}' as wh (type postgres, read_only)")
        con.execute("use wh")
        return con.sql(query).fetchall()


PHASES = {"extract": ("normalize", "extracted", "normalize"), "load": ("load", "normalized", "load")}
"""Instants to kill an ingest at: the dlt folder that gains a package when the phase is reached,
and the dlt step that then waits for the kill."""


def hold_at_phase(folder: str, step: str) -> None:
    """In the child that ``kill_ingest_after`` kills: once ``folder`` holds a package it did not
    hold at start, dlt's ``step`` (``normalize`` or ``load``) waits for the kill instead of running.
    Without it the kill raced the ingest: a fast machine finished a small batch between two polls
    and the test failed now and then."""
    import dlt

    path = Path(folder)
    before = set(path.glob("*")) if path.exists() else set()
    original = getattr(dlt.Pipeline, step)

    def held(self: Any, *args: Any, **kwargs: Any) -> Any:
        if path.exists() and set(path.glob("*")) - before:
            time.sleep(3600)
        return original(self, *args, **kwargs)

    setattr(dlt.Pipeline, step, held)


def kill_ingest_after(settings: Settings, source: str, delay: float | str, env: dict[str, str] | None = None) -> None:
    """Start ``ingest_source`` of ``source`` in a process of its own and SIGKILL it (and its
    children) after ``delay`` seconds, or once a phase is reached (``"extract"``: dlt has an
    extracted package; ``"load"``: a normalized one), where the child waits (``hold_at_phase``).
    Phases, not late fixed instants: those would be missed on a faster machine. Fails if the ingest
    finished before the kill."""
    folder = settings.pipelines_dir.joinpath(source, *PHASES[delay][:2]) if isinstance(delay, str) else None
    hold = f"hold_at_phase({str(folder)!r}, {PHASES[delay][2]!r}); " if isinstance(delay, str) else ""
    script = (
        "from pathlib import Path; from ingestion.dlt_settings import configure_dlt; "
        "from dusk.settings import Settings; from tests.helpers import hold_at_phase, ingest, sources; "
        f"configure_dlt(); {hold}"
        f"s = Settings(Path({str(settings.data_dir)!r}), Path({str(settings.warehouse)!r}), Path('t'), "
        f"{settings.demo}, {settings.demo_seed}); "
        f"r = ingest(sources()[{source!r}], s); print(r.ok, r.error)"
    )
    before = set(folder.glob("*")) if folder is not None and folder.exists() else set()
    proc = subprocess.Popen([sys.executable, "-c", script], env=env or dict(os.environ), start_new_session=True)
    if folder is not None:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if folder.exists() and set(folder.glob("*")) - before:
                break
            time.sleep(0.002)
    else:
        time.sleep(float(delay))
    assert proc.poll() is None, f"the ingest finished before the kill ({delay}); the test needs an earlier instant"
    os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
    assert code == -signal.SIGKILL, f"the ingest ended by itself (exit {code}) just before the kill ({delay})"


class WebhookReceiver:
    """A local HTTP server that records what is posted (or put) to it (a stand-in for Slack's
    incoming webhook, a healthchecks-style heartbeat receiver, or a Prometheus Pushgateway);
    ``fail_first`` requests are answered 503 first."""

    def __init__(self, fail_first: int = 0) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.posts: list[dict] = []
        """The JSON bodies."""
        self.bodies: list[str] = []
        """The bodies that are not JSON (a heartbeat's line)."""
        self.paths: list[str] = []
        self.failures_left = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.paths.append(self.path)
                if receiver.failures_left > 0:
                    receiver.failures_left -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    receiver.posts.append(json.loads(body))
                except json.JSONDecodeError:
                    receiver.bodies.append(body.decode(errors="replace"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            do_PUT = do_POST  # a Pushgateway receives a night's metrics by PUT

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The webhook URL; its path plays the part of the secret a Slack URL carries."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/canary-webhook-secret"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def project_copy(into: Path, extra: dict[str, str]) -> Path:
    """A copy of this project's tracked files in ``into``, with ``extra`` files (path: text)
    added: a project with a model or test of a test's own. Run ``python -m dusk`` with the copy
    as its working directory: it imports the copy's dusk, whose project is the copy."""
    from tests.conftest import PROJECT_DIR

    tracked = subprocess.run(["git", "ls-files"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
    for name in tracked.stdout.splitlines():
        if (PROJECT_DIR / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_DIR / name, into / name)
    for name, text in extra.items():
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_text(text)
    return into


def diff_counts(record: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """What a night's data diff told readers, per mart and snapshot: its status, rows before and
    after, added, removed and changed; asserted compared (no error), with rows added."""
    fields = ("status", "rows_before", "rows_after", "added", "removed", "changed")
    counts = {
        d["relation"]: tuple(d[f] for f in fields)
        for d in record["diff"]
        if d["relation"].startswith(("marts.", "snapshots."))
    }
    assert counts and {c[0] for c in counts.values()} <= {"compared", "unchanged"}, counts
    assert any(c[3] for c in counts.values()), "the night added nothing for readers"
    return counts


def prometheus_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus textfile by name and labels (sorted), read with
    prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def lineage_events(record: dict) -> list[dict]:
    """The OpenLineage events a night wrote, from the file its record names."""
    import json
    import re

    found = re.fullmatch(r"(\d+) events written to (.+)", record["lineage"] or "")
    assert found, f"the night wrote no lineage file: {record['lineage']}"
    events = [json.loads(line) for line in Path(found.group(2)).read_text().splitlines()]
    assert len(events) == int(found.group(1))
    return events


BUILT_KINDS = ("model", "snapshot", "seed")
"""The dbt node kinds a night builds into relations."""


def downstream(ws: Workspace, *starts: str) -> set[str]:
    """The nodes dbt builds downstream of ``starts`` (unique ids; a model among them is built
    itself), unit tests of the models among them included, from the last night's manifest."""
    manifest = json.loads((ws.root / "target" / "manifest.json").read_text())
    seen = {u for u in starts if u.startswith("model.")}
    todo = list(starts)
    while todo:
        for child in manifest["child_map"].get(todo.pop(), []):
            if child not in seen and child.split(".")[0] in (*BUILT_KINDS, "test"):
                seen.add(child)
                todo.append(child)
    return seen | {u for u, t in manifest["unit_tests"].items() if set(t["depends_on"]["nodes"]) & seen}


def always_built(ws: Workspace) -> set[str]:
    """What every night that builds anything runs: the run ledger's tests (the ledger changes
    every night; alone, that builds nothing)."""
    return downstream(ws, "source.dusk.ledger.runs")
