"""Shared fixtures: an isolated workspace (data dir, dbt target) and a way to run the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

PROJECT_DIR = Path(__file__).resolve().parent.parent


SPARK_CONF_DIR = Path(__file__).parent / "spark-conf"
"""Spark's defaults for the suites' Spark (its ``spark-defaults.conf``): the JIT's first tier, one
GC thread, no whole-stage code generation. On the demo's small data they took 41 % off a Spark
night's CPU time here, which is what two Spark suites side by side on two cores wait for.
Every Spark the suites start reads it: the runner's sessions, dbt's, the local cluster's."""
os.environ["SPARK_CONF_DIR"] = str(SPARK_CONF_DIR)


@dataclass
class Workspace:
    """A data dir and dbt target dir of one's own, and the CLI run against them; the warehouse is
    the DuckDB file in the data dir, or, with ``pg_database``, that PostgreSQL database, or, with
    ``spark``, Iceberg tables in a SQLite catalog in the data dir (an in-process Spark session)."""

    root: Path
    pg_database: str | None = None
    """The PostgreSQL warehouse's database (DUSK_TARGET=postgres); None: the DuckDB file."""
    spark: bool = False
    """Spark with Iceberg tables (DUSK_TARGET=spark), embedded."""
    project: Path = PROJECT_DIR
    """The project the CLI runs (a copy with a test's own models: tests.helpers.project_copy)."""

    @property
    def engine(self) -> str:
        return "spark" if self.spark else "postgres" if self.pg_database else "duckdb"

    @property
    def catalog_db(self) -> Path:
        """The Spark warehouse's Iceberg catalog (a SQLite file)."""
        return self.data_dir / "iceberg" / "catalog.db"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def shop_db(self) -> Path:
        return self.data_dir / "demo" / "shop.sqlite"

    @property
    def truth_db(self) -> Path:
        return self.data_dir / "demo" / "truth.sqlite"

    @property
    def sources_file(self) -> Path:
        """The project's sources.yml with a NATS stream, subject and consumer of this test's own."""
        path = self.root / "sources.yml"
        if not path.exists():
            write_sources_with_own_stream(path)
        return path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DUSK_", "SOURCES__"))}
        env.update(
            DUSK_SOURCES_FILE=str(self.sources_file),
            DUSK_DATA_DIR=str(self.data_dir),
            DBT_TARGET_PATH=str(self.root / "target"),
            DBT_LOG_PATH=str(self.root / "logs"),
            DUSK_DEMO_SEED="7",
            COLUMNS="200",
        )
        if self.pg_database:
            env.update(DUSK_TARGET="postgres", DUSK_PG_DATABASE=self.pg_database)
        if self.spark:
            env.update(DUSK_TARGET="spark", DUSK_ICEBERG_CATALOG_URI=f"sqlite:///{self.catalog_db}")
        return env

    @property
    def attach(self) -> tuple[str, str]:
        """What DuckDB ATTACHes to read this warehouse, and its options (read-only); on Spark the
        Iceberg catalog, marked :data:`ICEBERG` (see :func:`duckdb_attach`)."""
        if self.pg_database:
            return pg_attach(self.pg_database)
        if self.spark:
            return str(self.catalog_db), ICEBERG
        return str(self.warehouse), "(read_only)"

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        """A DuckDB connection reading the warehouse, read-only, in DuckDB's SQL on every engine
        (PostgreSQL through DuckDB's postgres extension, its times in UTC; Spark's Iceberg tables
        through a mirror, see :func:`lake_mirror`)."""
        with read_warehouse(self.attach) as con:
            yield con

    def cli(
        self, *args: str, check: bool = True, env_extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "dusk", *args],
            cwd=self.project,
            env={**self.env(), **(env_extra or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"dusk {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def last_run(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "runs" / "last_run.json").read_text())


ICEBERG = "(type iceberg)"
"""How :attr:`Workspace.attach` marks a Spark warehouse: the path is its Iceberg catalog."""


def duckdb_attach(attach: tuple[str, str]) -> tuple[str, str]:
    """What DuckDB ATTACHes for a warehouse as :attr:`Workspace.attach` gives it: itself, or for a
    Spark warehouse a fresh mirror of its Iceberg tables (DuckDB attaches no Iceberg SQL catalog)."""
    what, how = attach
    if how == ICEBERG:
        return str(lake_mirror(Path(what))), "(read_only)"
    return attach


def lake_mirror(catalog_db: Path, served: bool = False) -> Path:
    """Every table of the Iceberg catalog ``catalog_db`` (the readers' ``served_*`` copies only
    with ``served``),
    read by pyiceberg (Iceberg itself, not Spark) into a DuckDB file beside it, made afresh: times
    with a zone as UTC without one, as DuckDB's tables hold them, and dlt's completed loads of a
    dataset (which dlt keeps as files on a lake) as its ``_dlt_loads`` table."""
    import duckdb
    import pyarrow as pa
    from pyiceberg.catalog.sql import SqlCatalog

    lake = catalog_db.parent / "warehouse"
    catalog = SqlCatalog("dusk", uri=f"sqlite:///{catalog_db}", warehouse=f"file://{lake}")
    mirror = catalog_db.with_suffix(".mirror.duckdb")
    mirror.unlink(missing_ok=True)
    with duckdb.connect(str(mirror)) as con:
        for namespace in catalog.list_namespaces():
            schema = ".".join(namespace)
            if schema.startswith("served_") and (not served or "__" in schema):
                continue
            con.execute(f'create schema if not exists "{schema}"')
            for identifier in catalog.list_tables(namespace):
                table = catalog.load_table(identifier).scan().to_arrow()
                columns = [
                    c.cast(pa.timestamp(c.type.unit)) if pa.types.is_timestamp(c.type) and c.type.tz else c
                    for c in table.columns
                ]
                data = pa.table(columns, names=table.column_names)  # noqa: F841 (read by DuckDB)
                con.execute(f'create table "{schema}"."{identifier[-1]}" as select * from data')
            loads = lake / schema / "_dlt_loads"
            if loads.is_dir() and any(loads.glob("*.jsonl")):
                con.execute(f"""create table "{schema}"._dlt_loads as select * from read_json('{loads}/*.jsonl')""")
    return mirror


def pg_attach(database: str) -> tuple[str, str]:
    """What DuckDB ATTACHes to read a PostgreSQL database of the local server, and how."""
    return f"host=127.0.0.1 port=5432 user=postgres dbname={database}", "(type postgres, read_only)"


@contextlib.contextmanager
def read_warehouse(attach: tuple[str, str]) -> Iterator[Any]:
    """A DuckDB connection whose default database is the attached warehouse (``attach``: what
    and how, as :attr:`Workspace.attach` gives it), with the postgres extension loaded."""
    import duckdb

    from ingestion.database.scan import load_extension

    what, how = duckdb_attach(attach)
    if "type postgres" not in how:
        with duckdb.connect(what, read_only=True) as con:
            load_extension(con, "duckdb_extension_postgres_scanner")  # to attach another, on PostgreSQL
            yield con
        return
    with duckdb.connect() as con:
        load_extension(con, "duckdb_extension_postgres_scanner")
        con.execute("set TimeZone = 'UTC'")
        con.execute(f"attach '{what}' as wh {how}")
        con.execute("use wh")
        yield con


ENGINES = ["duckdb", "postgres", pytest.param("spark", marks=pytest.mark.spark_proof)]
"""The warehouse engines the proof suites run on. Spark's runs are their own CI step (`make
proof-spark`): a Spark night costs about ten DuckDB nights here."""


@pytest.fixture(params=ENGINES)
def engine_workspace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    """A workspace on each warehouse engine: the DuckDB file, a PostgreSQL database of its own
    (created by the runner on first use, dropped afterwards), and Spark with a lake of its own."""
    if request.param in ("duckdb", "spark"):
        if request.param == "spark":
            require_spark()
        ws = Workspace(tmp_path, spark=request.param == "spark")
        yield ws
        delete_demo_stream(ws.sources_file)
        return
    with pg_databases(1) as (database,):
        ws = Workspace(tmp_path, pg_database=database)
        yield ws
        delete_demo_stream(ws.sources_file)


@contextlib.contextmanager
def pg_databases(count: int) -> Iterator[list[str]]:
    """Names of PostgreSQL databases that do not exist yet on the local server (the runner creates
    a warehouse's on first use), each dropped afterwards with any copy made of it (``<name>_*``)."""
    import psycopg

    admin_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg.connect(admin_url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        _service_missing(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    names = [f"dusk_test_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    try:
        yield names
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            for name in names:
                for (found,) in admin.execute(
                    "select datname from pg_database where datname = %s or datname like %s", [name, name + "\\_%"]
                ).fetchall():
                    admin.execute(f'drop database if exists "{found}" with (force)')


_OWN_STREAMS: list[Path] = []
"""Every sources.yml :func:`write_sources_with_own_stream` wrote in this process: the session
deletes their streams at its end, whether or not the test that made one deleted it."""


def write_sources_with_own_stream(path: Path) -> None:
    """The project's sources.yml, with a NATS stream, subject and consumer no other test uses."""
    tag = uuid.uuid4().hex[:12]
    text = (PROJECT_DIR / "ingestion" / "sources.yml").read_text()
    text = text.replace("DUSK_WEB", f"DUSK_TEST_{tag}").replace("dusk.web.events", f"dusk.test.{tag}.events")
    path.write_text(text.replace("durable: dusk_web", f"durable: dusk_test_{tag}"))
    _OWN_STREAMS.append(path)


@pytest.fixture(scope="session", autouse=True)
def own_demo_stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests that create the demo (it publishes web events when NATS runs) use a stream of their
    own, deleted at the end, never the demo's DUSK_WEB on the machine's NATS. At the end the
    session also deletes every stream its tests' workspaces made."""
    path = tmp_path_factory.mktemp("sources") / "sources.yml"
    write_sources_with_own_stream(path)
    saved = os.environ.get("DUSK_SOURCES_FILE")
    os.environ["DUSK_SOURCES_FILE"] = str(path)
    yield
    if saved is None:
        os.environ.pop("DUSK_SOURCES_FILE", None)
    else:
        os.environ["DUSK_SOURCES_FILE"] = saved
    # this one, and any a test's workspace left (a run of make test left three)
    for written in _OWN_STREAMS:
        if written.exists():
            delete_demo_stream(written)


@pytest.fixture(autouse=True)
def counts_reconcile(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test that ingests also proves the counts: no run may report a table's loaded rows
    differently from what raw received (dusk.ingest.check_counts logs the difference)."""
    yield
    wrong = [r.getMessage() for r in caplog.get_records("call") if "counts do not reconcile" in r.getMessage()]
    assert not wrong, wrong


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace(tmp_path)
    yield ws
    if ws.sources_file.exists():  # the demo may have created its NATS stream: remove it
        delete_demo_stream(ws.sources_file)


def delete_demo_stream(sources_file: Path) -> None:
    import asyncio

    from ingestion import stream
    from ingestion.declaration import load_sources

    web = next((s for s in load_sources(sources_file).values() if s.kind == "stream"), None)
    if web is None:
        return

    async def delete() -> None:
        nc = await stream.connect(str(web.option("servers")))
        try:
            await nc.jetstream().delete_stream(str(web.option("stream")))
        finally:
            await nc.close()

    # NATS not running, or the stream never created: nothing to remove
    with contextlib.suppress(Exception):
        asyncio.run(delete())


SERVERS = {
    "postgres": ("postgresql://postgres@127.0.0.1:5432/postgres", "postgresql://postgres@127.0.0.1:5432/{db}"),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:3306/test", "mysql+pymysql://root@127.0.0.1:3306/{db}"),
}


@pytest.fixture(params=sorted(SERVERS))
def shop_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database on each real server (PostgreSQL, MariaDB), dropped afterwards."""
    with server_database(request.param) as url:
        yield url


@contextlib.contextmanager
def server_database(server: str) -> Iterator[str]:
    """A new, empty database on the real server ``server`` (a key of SERVERS), dropped afterwards."""
    admin_url, url = SERVERS[server]
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        _service_missing(f"{server} is not reachable at {admin.url.render_as_string(hide_password=True)}: {exc.orig}")
    db = f"dusk_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as con:
        con.execute(sa.text(f"create database {db}"))
    try:
        yield url.format(db=db)
    finally:
        with admin.connect() as con:
            if server == "postgres":
                con.execute(sa.text(f"drop database if exists {db} with (force)"))
            else:
                con.execute(sa.text(f"drop database if exists {db}"))
        admin.dispose()


def _service_missing(reason: str) -> None:
    """Skip on a laptop without the service; fail under CI=true, where it must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def require_spark() -> None:
    """Skip (fail under CI=true) where the Spark engine is not set up (`make setup-spark`)."""
    from dusk.spark import SparkSetupError, spark_jars

    try:
        spark_jars()
    except SparkSetupError as exc:
        _service_missing(f"the Spark engine is not set up: {exc}")


def _pg_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def logical_pg_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server with wal_level=logical (what CDC needs): the machine's own server when
    it runs so, else a throwaway cluster of the machine's PostgreSQL binaries, stopped after."""
    admin_url = SERVERS["postgres"][0]
    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as con:
            if con.execute(sa.text("show wal_level")).scalar() == "logical":
                yield admin_url
                return
    except sa.exc.OperationalError:
        pass
    finally:
        engine.dispose()
    bindir = _pg_bindir()
    if bindir is None:
        _service_missing("no PostgreSQL with wal_level=logical, and no PostgreSQL binaries (initdb) to start one")
        return
    root = Path(tempfile.mkdtemp(prefix="dusk-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = (
        f"-c wal_level=logical -c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} "
        "-c fsync=off -c max_replication_slots=20 -c max_wal_senders=20"
    )
    ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run([*ctl, "-o", options, "-w", "-l", str(root / "log"), "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def logical_pg_url(logical_pg_admin: str) -> Iterator[str]:
    """A new, empty database on a PostgreSQL server with wal_level=logical, dropped afterwards
    with the replication slots on it."""
    admin = sa.create_engine(logical_pg_admin, isolation_level="AUTOCOMMIT")
    db = f"dusk_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as con:
        con.execute(sa.text(f"create database {db}"))
    try:
        yield logical_pg_admin.rsplit("/", 1)[0] + f"/{db}"
    finally:
        with admin.connect() as con:
            con.execute(
                sa.text("select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = :db"),
                {"db": db},
            )
            con.execute(sa.text(f"drop database if exists {db} with (force)"))
        admin.dispose()


# ---------------------------------------------------------------- the proof suites (tests/proof)
TALLIES = PROJECT_DIR / ".pytest_cache" / "dusk-tallies"
"""Each proof suite writes its one-line tally here; the session's summary prints them (also when
pytest-xdist ran the suite in another process)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dusk proof suites")
    # the small size `make test` and `make proof-spark` run: two of each, so a second night runs on
    # what the first left (state-aware, incremental) and a second kill recovers from a recovery
    group.addoption("--nights", type=int, default=int(os.environ.get("NIGHTS") or 2), help="simulate-check nights")
    group.addoption("--kills", type=int, default=int(os.environ.get("KILLS") or 2), help="chaos: SIGKILLs")
    group.addoption(
        "--seed",
        type=int,
        default=int(os.environ["SEED"]) if os.environ.get("SEED") else None,
        help="the simulator's and the chaos suite's seed (default: random, printed)",
    )


FIRST_FILES = (
    "tests/proof/test_canary.py",
    "tests/proof/test_chaos.py",
    "tests/proof/test_simulate.py",
    "tests/test_spark.py",
    "tests/runner/test_publish.py",
    "tests/runner/test_erase.py",
    "tests/runner/test_changes.py",
)
"""The files that start first: the canary, then the longest of `make test` by their tests'
durations (CI's of 2026-12-04: 8-20 minutes each). Each process gets one file to run and one to
run next, so the canary, chaos and the simulation go to the three processes, and the Spark file
follows the canary, the shortest of the three. In `make proof-spark`, whose two processes share
three tests, the canary then goes before the simulation while chaos runs on the other process."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """:data:`FIRST_FILES` first, then the rest of the files that run whole nights: `make test`
    hands each file to one process, and a long file started last would leave the others idle at
    the end (the Spark file, the longest in CI's run, came last by name)."""
    gone = [name for name in FIRST_FILES if not (PROJECT_DIR / name).is_file()]
    if gone:  # a renamed file would silently lose its place
        raise pytest.UsageError(f"FIRST_FILES in tests/conftest.py names files that do not exist: {', '.join(gone)}")
    rank = {name: i for i, name in enumerate(FIRST_FILES)}

    def order(item: pytest.Item) -> tuple[int, bool]:
        name = Path(str(item.path)).relative_to(PROJECT_DIR).as_posix()
        return rank.get(name, len(rank)), item.get_closest_marker("e2e") is None

    items.sort(key=order)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
        shutil.rmtree(TALLIES, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = sorted(p.read_text().strip() for p in TALLIES.glob("*.txt")) if TALLIES.exists() else []
    outcomes = {
        outcome: [r for r in terminalreporter.stats.get(outcome, []) if "badinput" in getattr(r, "keywords", {})]
        for outcome in ("passed", "failed", "skipped", "error")
    }
    calls = {
        outcome: len([r for r in reports if outcome == "error" or getattr(r, "when", "call") == "call"])
        for outcome, reports in outcomes.items()
    }
    if sum(calls.values()):
        lines.append(
            f"badinput: {sum(calls.values())} bad inputs, {calls['passed']} handled as expected, "
            f"{calls['failed'] + calls['error']} not, {calls['skipped']} skipped"
        )
    if lines:
        terminalreporter.section("what we prove")
        for line in lines:
            terminalreporter.write_line(line)


def write_tally(suite: str, line: str) -> None:
    """Record a suite's tally line for the session summary."""
    TALLIES.mkdir(parents=True, exist_ok=True)
    (TALLIES / f"{suite}.txt").write_text(line + "\n")


@pytest.fixture(scope="session")
def seed(request: pytest.FixtureRequest) -> int:
    """The proof suites' seed: --seed / SEED, else a random one (printed so a failure can be replayed)."""
    import random

    value = request.config.getoption("--seed")
    return int(value) if value is not None else random.randrange(1, 1_000_000)
