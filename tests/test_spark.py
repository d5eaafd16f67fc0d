"""The warehouse is a choice: Spark with Iceberg tables gives what DuckDB gives.

Two workspaces with the same demo seed, salt and key-diff clock run the same night, one on the
embedded DuckDB file and one on Spark (an in-process ``local[2]`` session, Iceberg tables in a
SQLite catalog of its own, raw written by dlt through pyiceberg). Their marts and snapshots are
compared row for row, read back through Iceberg itself (pyiceberg), not through Spark. Then the
DuckDB installation moves to Spark (`dusk migrate --to spark`, a lake of its own) and both run
a second night there, compared again: the moved one read only the night's changes, kept its
snapshot history and ledger, and holds simulate-check's invariants (raw = the source, counts
reconciled, the snapshot = the truth). Between the nights an Iceberg reader plans a read of a served
table, the way a long query holds its files, and reads it after the second night was published
over it. The Spark project has one more test, a warning on request: only when it warns does
Spark keep its failing rows.

Needs ``make setup-spark`` (Java, pyspark, Iceberg's jars): skipped without it on a laptop,
failed under CI=true.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dusk.settings import Settings
from tests.conftest import Workspace, delete_demo_stream
from tests.helpers import diff_counts, lineage_events, project_copy
from tests.proof import invariants
from tests.proof.invariants import MARTS, SNAPSHOTS, assert_reconciled, assert_snapshot_is_truth

WARNS = (
    "-- warns when DUSK_TEST_WARN=yes: every customer is a failing row\n"
    "{{ config(severity='warn') }}\n"
    "select customer_id from {{ ref('customers') }} where '{{ env_var('DUSK_TEST_WARN', 'no') }}' = 'yes'\n"
)
SAME_NIGHT = {
    "DUSK_PII_SALT": "engines-suite-salt-0001",
    "DUSK_DETECTED_AT": "2026-01-20T00:00:00Z",
}
RUN_CLOCKS = {"orders": "last_load"}
"""Mart columns that hold a dlt load id (differs between two warehouses by nature)."""
SNAPSHOT_COLUMNS = "dlt_load_id, dbt_scd_id"
"""Snapshot columns that differ by nature: the load id, and dbt's row hash of it (Spark's text of
a timestamp, which dbt hashes, is not DuckDB's)."""


def _spark_ready() -> str | None:
    """Why the Spark engine cannot run here (None: it can)."""
    from dusk.spark import SparkSetupError, spark_jars

    try:
        spark_jars()
    except SparkSetupError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def spark_ready() -> None:
    reason = _spark_ready()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the Spark engine is not set up: {reason}")
        pytest.skip(f"the Spark engine is not set up: {reason}")


def spark_env(ws: Workspace) -> dict[str, str]:
    return {"DUSK_TARGET": "spark", "DUSK_ICEBERG_CATALOG_URI": f"sqlite:///{ws.data_dir / 'iceberg' / 'catalog.db'}"}


def catalog(ws: Workspace) -> Any:
    from pyiceberg.catalog.sql import SqlCatalog

    lake = f"file://{ws.data_dir / 'iceberg' / 'warehouse'}"
    return SqlCatalog("dusk", uri=f"sqlite:///{ws.data_dir / 'iceberg' / 'catalog.db'}", warehouse=lake)


def lake_copy(ws: Workspace, relations: list[str], to: Path) -> tuple[str, str]:
    """The relations of a Spark warehouse, read by pyiceberg, in a DuckDB file (times in UTC,
    without a zone, as DuckDB's marts hold them), as :func:`invariants.differences` attaches it."""
    import pyarrow as pa

    lake = catalog(ws)
    with duckdb.connect(str(to)) as con:
        for relation in relations:
            table = lake.load_table(relation).scan().to_arrow()
            columns = [
                col.cast(pa.timestamp(col.type.unit)) if pa.types.is_timestamp(col.type) and col.type.tz else col
                for col in table.columns
            ]
            data = pa.table(columns, names=table.column_names)  # noqa: F841 (read by DuckDB)
            schema, name = relation.split(".")
            con.execute(f"create schema if not exists {schema}")
            con.execute(f"create table {schema}.{name} as select * from data")
    return str(to), "(read_only)"


def test_spark_session_shares_one_catalog_with_dlt(spark_ready: None) -> None:
    """The jars and the relocation are in place: the shaded Jackson Iceberg needs is there."""
    import zipfile

    from dusk.spark import RELOCATED_JACKSON, SHADED

    with zipfile.ZipFile(RELOCATED_JACKSON) as jar:
        assert SHADED.replace(".", "/") + "/core/JsonFactoryBuilder.class" in jar.namelist()


@pytest.mark.e2e
def test_nights_on_spark_equal_the_same_nights_on_duckdb_and_a_duckdb_installation_moves_there(
    spark_ready: None, tmp_path: Path
) -> None:
    project = project_copy(tmp_path / "project", {"data-tests/warns_on_request.sql": WARNS})
    duck, spark = Workspace(tmp_path / "duckdb"), Workspace(tmp_path / "spark", project=project)
    try:
        _nights(duck, spark, tmp_path)
    finally:
        for ws in (duck, spark):
            delete_demo_stream(ws.sources_file)


def _nights(duck: Workspace, spark: Workspace, tmp_path: Path) -> None:
    relations = [f"marts.{m}" for m in MARTS] + [f"snapshots.{s}" for s in SNAPSHOTS]
    clocks = {f"marts.{m}": c for m, c in RUN_CLOCKS.items()} | {f"snapshots.{s}": SNAPSHOT_COLUMNS for s in SNAPSHOTS}
    envs = {id(duck): SAME_NIGHT, id(spark): {**SAME_NIGHT, **spark_env(spark)}}
    for ws in (duck, spark):
        ws.root.mkdir()
        out = ws.cli("run", env_extra=envs[id(ws)])
        assert "Run SUCCESS" in out.stdout, out.stdout
    assert "Warehouse: spark local[2], iceberg catalog sqlite:///" in out.stdout
    assert spark.last_run()["published"]["where"].endswith("(served_*)")
    written = {o["namespace"] for e in lineage_events(spark.last_run()) for o in e["outputs"]}
    assert written == {"iceberg://dusk"}
    assert not spark.warehouse.exists()  # nothing of the night went to a DuckDB file
    lake = catalog(spark)
    assert not [t for n in lake.list_namespaces() if n == ("test_failures",) for t in lake.list_tables(n)]
    first = lake_copy(spark, relations, tmp_path / "spark-1.duckdb")
    assert invariants.differences((str(duck.warehouse), "(read_only)"), first, relations, clocks) == {}

    first_id = lake.load_table("served_dusk_published.about").scan().to_arrow()["run_id"].to_pylist()
    assert first_id == [spark.last_run()["run_id"]]
    # a long read: it planned its files before the next night, and reads them after it published
    held = lake.load_table("served_marts.orders").scan()
    held_tasks = list(held.plan_files())
    orders_before = sum(t.file.record_count for t in held_tasks)

    # the DuckDB installation moves to Spark (a catalog and lake of its own) and goes on there
    moved = duck.cli("migrate", "--to", "spark", env_extra=SAME_NIGHT)
    assert "Every table equals its copy" in moved.stdout, moved.stdout
    assert not [p for p in (duck.data_dir / "dlt").iterdir() if p.name != "_staging"]  # dlt's state: on the lake
    envs[id(duck)] = {**SAME_NIGHT, **spark_env(duck)}
    duck.spark = True  # read through its lake from now on

    envs[id(spark)]["DUSK_TEST_WARN"] = "yes"
    for ws in (duck, spark):
        ws.cli("simulate", "--days", "1", env_extra=envs[id(ws)])
        out = ws.cli("run", env_extra=envs[id(ws)])
        assert "Run SUCCESS" in out.stdout, out.stdout
    second_id = spark.last_run()["run_id"]
    assert "1 warned" in out.stdout, out.stdout
    warned = lake.load_table("test_failures.warns_on_request").scan().to_arrow().num_rows
    assert warned == lake.load_table("marts.customers").scan().to_arrow().num_rows > 0
    del envs[id(spark)]["DUSK_TEST_WARN"]
    assert held.to_arrow().num_rows == orders_before  # the reader's files outlived the publish
    about = lake.load_table("served_dusk_published.about").scan().to_arrow()
    assert about["run_id"].to_pylist() == [second_id]  # a new read sees tonight's, all of it
    assert lake.load_table("served_marts.orders").scan().to_arrow().num_rows > orders_before
    namespaces = {".".join(n) for n in lake.list_namespaces()}
    assert {"served_marts", "served_snapshots", "served_staging", "served_dusk_ledger"} <= namespaces
    assert not {n for n in namespaces if n.startswith("served_raw") or n == "served_dusk_private"}
    assert not {n for n in namespaces if n.endswith("__next")}
    assert [n for n in namespaces if "__retired_" in n]  # last night's, kept for readers like this one

    night = [
        {(s["source"], t["table"]): t for s in ws.last_run()["sources"] for t in s["tables"]} for ws in (duck, spark)
    ]
    assert night[0] == night[1]  # both read only the night's changes: the moved one's state went along
    assert sum(t["deleted"] for t in night[0].values()) > 0  # and it was no first load: deletions marked
    # the data diff: the moved installation's readers had nothing on the lake yet (all new, the same rows)
    counts = diff_counts(spark.last_run())
    for d in duck.last_run()["diff"]:
        assert d["status"] == "new", d
        if d["relation"] in counts:
            assert d["rows_after"] == counts[d["relation"]][2], d
    second = lake_copy(spark, relations, tmp_path / "spark-2.duckdb")
    # what the diff told readers on the lake: their rows before and after, as the two nights' copies hold them
    with duckdb.connect() as con:
        con.execute(f"attach '{first[0]}' as night1 (read_only)")
        con.execute(f"attach '{second[0]}' as night2 (read_only)")
        for relation, (_, before, after, added, removed, _) in counts.items():
            if relation in relations:
                (rows1,) = con.execute(f"select count(*) from night1.{relation}").fetchone()  # type: ignore[misc]
                (rows2,) = con.execute(f"select count(*) from night2.{relation}").fetchone()  # type: ignore[misc]
                assert (before, after) == (rows1, rows2) and after - before == added - removed, relation
    moved_second = lake_copy(duck, relations, tmp_path / "moved-2.duckdb")
    assert invariants.differences(moved_second, second, relations, clocks) == {}  # snapshot history too
    for ws in (duck, spark):
        runs = catalog(ws).load_table("dusk_ledger.runs").scan().to_arrow().sort_by("run_id")
        assert runs["status"].to_pylist() == ["success", "success"]
    # simulate-check's invariants across the move: raw = the source (deletions marked), the
    # summary's counts = what raw received, the snapshot = the truth of both nights' days
    assert_reconciled(duck, duck.last_run())
    assert_snapshot_is_truth(duck, [0, 1], salt=SAME_NIGHT["DUSK_PII_SALT"])

    status = spark.cli("status", env_extra=envs[id(spark)])
    assert second_id in status.stdout and "success" in status.stdout
    _erase_on_spark(spark, envs[id(spark)])


def _erase_on_spark(ws: Workspace, env: dict[str, str]) -> None:
    """`dusk erase` on the lake: a customer's rows are gone from every table of every namespace
    (raw, snapshots, models, served and retired copies), and the tables it touched keep no older
    snapshot whose data files would still hold them."""
    with sqlite3.connect(ws.shop_db) as shop:
        cid, email = shop.execute(
            "select customer_id, email from customers where customer_id not in (select customer_id from orders) "
            "order by customer_id limit 1"
        ).fetchone()
        shop.execute("delete from customers where customer_id = ?", [cid])
    lake = catalog(ws)
    staged = lake.load_table("staging.stg_shop__customers").scan(row_filter=f"customer_id == {cid}").to_arrow()
    (hashed,) = staged["email"].to_pylist()
    out = ws.cli("erase", "--source", "shop", "--table", "customers", "--key", f"customer_id={cid}", env_extra=env)
    assert "Erased 1 key(s) of shop.customers" in out.stdout, out.stdout
    assert "snapshots.customers_snapshot: 1" in out.stdout and "served_marts.customers: 1" in out.stdout, out.stdout
    lake = catalog(ws)  # the tables as they are now
    found = []
    for namespace in lake.list_namespaces():
        for identifier in lake.list_tables(namespace):
            text = str(lake.load_table(identifier).scan().to_arrow().to_pylist())
            where = ".".join(identifier)
            found += [f"{what} in {where}" for what, v in (("e-mail", email), ("hash", hashed)) if v in text]
    assert not found, f"the erased customer is still in {found}"
    for name in ("raw_shop.customers", "snapshots.customers_snapshot", "served_marts.customers", "marts.customers"):
        assert len(lake.load_table(name).snapshots()) == 1, f"{name} keeps older snapshots"


@contextmanager
def _translated() -> Iterator[Any]:
    from dusk.warehouse.spark_engine import SparkConnection

    class Recorder(SparkConnection):
        """Keeps the Spark SQL it would run; ``describe`` answers with ``columns``."""

        def __init__(self) -> None:
            super().__init__()
            self.sent: list[str] = []
            self.columns: list[str] = []

        def sql(self, query: str) -> list[tuple[Any, ...]]:
            self.sent.append(query)
            return [(c, "string", None) for c in self.columns] if query.startswith("describe") else []

    yield Recorder()


def test_runner_sql_becomes_spark_sql_with_literal_parameters() -> None:
    with _translated() as con:
        con.execute(
            "select count(*) from staging.\"quarantine_x\" where a = ? and b = '?' and c = ? limit ?",
            ["it's", datetime.datetime(2026, 1, 2, 3, 4, 5), 3],
        )
        assert con.sent == [
            "SELECT COUNT(*) FROM staging.`quarantine_x` WHERE a = 'it\\'s' AND b = '?' "
            "AND c = CAST('2026-01-02 03:04:05' AS TIMESTAMP) LIMIT 3"
        ]
        con.sent.clear()
        con.executemany("insert into dusk_ledger.steps values (?, ?, ?)", [[1, "a", None], [2, "b", 2.5]])
        assert con.sent == ["INSERT INTO dusk_ledger.steps VALUES (1, 'a', NULL), (2, 'b', 2.5)"]
        con.sent.clear()
        for statement in ("begin", "commit", "rollback"):
            con.execute(statement)  # Spark has no transactions: every statement commits on its own
        con.execute("create table if not exists s.t (id varchar primary key, x double precision not null)")
        assert con.sent == ["CREATE TABLE IF NOT EXISTS s.t (id STRING, x DOUBLE NOT NULL)"]
        con.sent.clear()
        con.columns = ["run_id", "mode"]
        con.execute("alter table s.t add column if not exists mode varchar")
        assert con.sent == ["describe table s.t"]  # there already: nothing added
        con.columns = ["run_id"]
        con.execute("alter table s.t add column if not exists mode varchar")
        assert con.sent[-1] == "ALTER TABLE s.t ADD COLUMN mode STRING"
        with pytest.raises(ValueError, match="cannot translate"):
            con.execute("create table x as select ?::varchar")


def test_spark_settings_name_the_catalog_and_hide_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from dusk.settings import SettingsError, runtime_environment

    monkeypatch.setenv("DUSK_TARGET", "spark")
    monkeypatch.setenv("DUSK_ICEBERG_CATALOG_URI", "postgresql://cat@127.0.0.1:5432/lake")
    monkeypatch.setenv("DUSK_ICEBERG_CATALOG_PASSWORD", "s3cret-catalog")
    monkeypatch.setenv("DUSK_SPARK_THRIFT", "127.0.0.1:10001")
    settings = Settings.from_env()
    assert "s3cret" not in settings.warehouse_label
    from dusk.spark import catalog_config

    monkeypatch.setenv("DUSK_ICEBERG_CATALOG_PASSWORD", "p@ss/word")  # quoted into pyiceberg's URL
    assert catalog_config(Settings.from_env())["uri"] == "postgresql+psycopg://cat:p%40ss%2Fword@127.0.0.1:5432/lake"
    monkeypatch.setenv("DUSK_ICEBERG_CATALOG_PASSWORD", "s3cret-catalog")
    assert (
        settings.warehouse_label
        == "spark thrift://127.0.0.1:10001, iceberg catalog postgresql://cat@127.0.0.1:5432/lake"
    )
    assert settings.parallel_sources == 2  # PostgreSQL takes two writers; the SQLite catalog one
    env = runtime_environment(settings)
    assert env["DUSK_SPARK_METHOD"] == "thrift" and env["DUSK_SPARK_PORT"] == "10001"
    # the password reaches dlt only through a variable whose name marks it secret (masked in logs)
    assert [k for k, v in env.items() if "s3cret" in v] == [
        "DBT_ENV_SECRET_ICEBERG_CATALOG",
        "ICEBERG_CATALOG__ICEBERG_CATALOG_CONFIG",
    ]
    monkeypatch.setenv("DUSK_ICEBERG_CATALOG_URI", "mysql://x@h/db")
    with pytest.raises(SettingsError, match="DUSK_ICEBERG_CATALOG_URI"):
        Settings.from_env()
    monkeypatch.delenv("DUSK_ICEBERG_CATALOG_URI")  # a cluster cannot share the embedded SQLite file
    with pytest.raises(SettingsError, match="DUSK_ICEBERG_CATALOG_URI=postgresql://"):
        Settings.from_env()


BESIDE_A_SESSION = """
import json
import pyarrow as pa
import sqlalchemy as sa
from pyiceberg.catalog.sql import SqlCatalog
from dusk.settings import Settings
from dusk.spark import catalog_config
from dusk.warehouse import open_warehouse

settings = Settings.from_env()
config = catalog_config(settings)
seen = {}
with open_warehouse(settings).connect() as con:  # the night's session, alive from here on
    con.execute("create schema if not exists beside")
    con.execute("create table beside.t (id int)")
    con.execute("insert into beside.t values (1)")
    lake = SqlCatalog("dusk", **config)
    lake.load_table("beside.t").append(pa.table({"id": pa.array([2], pa.int32())}))  # as dlt loads
    seen["after the load"] = con.execute("select count(*) from beside.t").fetchall()[0][0]
    con.execute("create schema if not exists moved")
    # as the publish switches: the catalog's row, from this process's Python side, at once
    with sa.create_engine(config["uri"], connect_args={"timeout": 1}).begin() as db:
        db.execute(sa.text("update iceberg_tables set table_namespace = 'moved' where table_name = 't'"))
    con.execute("insert into moved.t values (3)")
    seen["after the switch"] = con.execute("select count(*) from moved.t").fetchall()[0][0]
    seen["pyiceberg reads"] = len(lake.load_table("moved.t").scan().to_arrow())
print(json.dumps(seen))
"""


def test_the_embedded_catalog_takes_commits_beside_a_live_spark_session(spark_ready: None, tmp_path: Path) -> None:
    """One Spark session serves a whole night: it holds no lock on the embedded SQLite catalog, so
    dlt's loads (pyiceberg commits) and the publish's switch (an update of the catalog's rows) go
    through beside it at once, and Spark reads what they committed. (Iceberg 1.10's check for its
    catalog tables would leave a read lock held: dusk makes the tables itself and turns it off.)"""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSK_")}
    env |= {
        "DUSK_TARGET": "spark",
        "DUSK_DATA_DIR": str(tmp_path / "data"),
        "DUSK_ICEBERG_CATALOG_URI": f"sqlite:///{tmp_path / 'data' / 'iceberg' / 'catalog.db'}",
    }
    out = subprocess.run([sys.executable, "-c", BESIDE_A_SESSION], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "after the load": 2,
        "after the switch": 3,
        "pyiceberg reads": 3,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
def test_a_local_cluster_shares_the_catalog_with_dlt(
    spark_ready: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make spark-up`'s cluster (master, worker, Thrift server on 127.0.0.1, an Iceberg catalog on
    PostgreSQL): the runner's SQL goes through the Thrift server, dlt writes raw into the same
    catalog, and a session whose executors run on the cluster's worker reads it."""
    import subprocess
    import sys
    import uuid
    from decimal import Decimal

    import dlt
    import psycopg

    from dusk.settings import runtime_environment
    from dusk.warehouse import ensure_ledger, open_warehouse
    from tests.conftest import _service_missing

    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        _service_missing(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}")
    database = f"dusk_test_iceberg_{uuid.uuid4().hex[:8]}"
    master_port, thrift_port = _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DUSK_")},
        "DUSK_DATA_DIR": str(tmp_path / "data"),
        "DUSK_ICEBERG_CATALOG_URI": f"postgresql://postgres@127.0.0.1:5432/{database}",
        "SPARK_MASTER_PORT": str(master_port),
        "SPARK_THRIFT_PORT": str(thrift_port),
    }
    cluster = [sys.executable, "-m", "dusk.spark"]
    try:
        up = subprocess.run([*cluster, "up"], env=env, capture_output=True, text=True, timeout=400)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"DUSK_SPARK_THRIFT=127.0.0.1:{thrift_port}" in up.stdout
        for key in ("DUSK_DATA_DIR", "DUSK_ICEBERG_CATALOG_URI"):
            monkeypatch.setenv(key, env[key])
        monkeypatch.setenv("DUSK_SPARK_THRIFT", f"127.0.0.1:{thrift_port}")
        settings = Settings.from_env(target="spark")
        for key, value in runtime_environment(settings).items():
            monkeypatch.setenv(key, value)
        warehouse = open_warehouse(settings)
        with warehouse.connect() as con:
            ensure_ledger(con)  # the runner's DDL, translated, through the Thrift server
            con.executemany(
                "insert into dusk_ledger.schema_changes values (?, ?, ?)",
                [["r1", "shop", "it's new"], ["r1", "web", "x"]],
            )
            rows = con.execute("select change from dusk_ledger.schema_changes where run_id = ? order by 1", ["r1"])
            assert rows.fetchall() == [("it's new",), ("x",)]

        pipeline = dlt.pipeline("cluster_probe", destination=warehouse.destination(), dataset_name="raw_probe",
                                pipelines_dir=str(tmp_path / "dlt"))  # fmt: skip
        items = dlt.resource(
            [{"id": 1, "amount": Decimal("12345678.91")}, {"id": 2, "amount": Decimal("-0.01")}],
            name="items", primary_key="id", columns={"amount": {"data_type": "decimal", "precision": 12, "scale": 2}},
        )  # fmt: skip
        pipeline.run(items, table_format="iceberg", loader_file_format="parquet")
        with warehouse.connect() as con:  # the Thrift server sees what dlt wrote, exactly
            assert con.execute("select id, amount from raw_probe.items order by id").fetchall() == [
                (1, Decimal("12345678.91")),
                (2, Decimal("-0.01")),
            ]
        probe = (
            "import os; from dusk.settings import Settings; from dusk.warehouse import open_warehouse\n"
            "w = open_warehouse(Settings.from_env(target='spark'))\n"
            "with w.connect() as con:\n"
            "    print(con.execute('select sum(amount) from raw_probe.items').fetchall())\n"
            "    print(con.session.sparkContext.master)\n"
        )
        session_env = {**env, "DUSK_SPARK_MASTER": f"spark://127.0.0.1:{master_port}"}
        read = subprocess.run(
            [sys.executable, "-c", probe], env=session_env, capture_output=True, text=True, timeout=300
        )
        assert read.returncode == 0, read.stderr[-3000:]
        assert read.stdout.split("\n")[:2] == ["[(Decimal('12345678.90'),)]", f"spark://127.0.0.1:{master_port}"]
    finally:
        subprocess.run([*cluster, "down"], env=env, capture_output=True, text=True, timeout=120)
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            admin.execute(f'drop database if exists "{database}" with (force)')


def test_dusk_env_gives_the_dbt_cli_the_runners_environment_without_secrets(spark_ready: None, tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSK_")}
    env |= {
        "DUSK_DATA_DIR": str(tmp_path),
        "DUSK_ICEBERG_CATALOG_URI": "postgresql://cat@127.0.0.1:5432/lake",
        "DUSK_ICEBERG_CATALOG_PASSWORD": "s3cret-catalog",
    }
    out = subprocess.run(
        [sys.executable, "-m", "dusk", "--target", "spark", "env"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "s3cret" not in out
    assert "export DUSK_TARGET=spark" in out and "export DUSK_SPARK_METHOD=session" in out
    assert "# ICEBERG_CATALOG__ICEBERG_CATALOG_CONFIG: a secret, not printed" in out
