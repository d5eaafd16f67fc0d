"""Spark with Apache Iceberg tables: the jars, the shared Iceberg catalog, and the setup.

There is no Maven here, so nothing is downloaded at run time (``spark.jars.packages`` is never
set). Iceberg's Spark runtime comes from the PyPI wheel ``snowpark-connect-deps-iceberg``
(Apache-2.0), the JDBC drivers of the catalog database from Debian (``libpostgresql-jdbc-java``,
``libxerial-sqlite-jdbc-java``). That runtime jar lacks the shaded Jackson it refers to
(``org.apache.iceberg.shaded.com.fasterxml.jackson``): :func:`setup` relocates pyspark's own
Jackson jars into that package with Debian's ``jarjar`` once, into ``<venv>/spark-jars``
(``make setup-spark``).

One Iceberg JDBC catalog is shared by dlt (pyiceberg's SQL catalog writes raw) and Spark
(``SparkCatalog``, ``type=jdbc``, Spark's default catalog), so both see the same tables by the same
names: a SQLite file by default (no server, for one machine), PostgreSQL for a cluster or a Thrift
server (SQLite's single writer gives ``SQLITE_BUSY`` under a long-running server).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    from dusk.settings import Settings

JARS_DIR = Path(sys.prefix) / "spark-jars"
"""Where :func:`setup` puts the jars Spark needs besides pyspark's own (inside the venv)."""
RELOCATED_JACKSON = JARS_DIR / "iceberg-shaded-jackson.jar"
DEBIAN_JARS = {"postgresql.jar": "libpostgresql-jdbc-java", "sqlite-jdbc.jar": "libxerial-sqlite-jdbc-java"}
"""The catalog databases' JDBC drivers (copied from /usr/share/java) and their Debian packages."""
JACKSON = ("core", "databind", "annotations", "datatype-jsr310")
SHADED = "org.apache.iceberg.shaded.com.fasterxml.jackson"
SCALA = "2.12"  # pyspark 3.5's Scala


class SparkSetupError(RuntimeError):
    """Spark cannot start here; the message says what to install or run."""


def iceberg_jars() -> list[Path]:
    """Iceberg's Spark runtime and SQL extensions, from the PyPI wheel."""
    try:
        import snowpark_connect_deps_iceberg as package
    except ImportError as exc:
        raise SparkSetupError("DUSK_TARGET=spark needs the Spark engine installed: run `make setup-spark`") from exc
    folder = Path(package.__file__ or "").parent / "jars"
    jars = sorted(folder.glob(f"iceberg-spark-*-3.5_{SCALA}-*.jar"))
    if len(jars) != 2:
        raise SparkSetupError(f"Iceberg's Spark 3.5 jars are missing from {folder}: run `make setup-spark`")
    return jars


def spark_jars() -> list[Path]:
    """Every jar the night's Spark (driver and executors) loads besides pyspark's own."""
    jars = [*iceberg_jars(), RELOCATED_JACKSON, *(JARS_DIR / name for name in DEBIAN_JARS)]
    missing = [str(j) for j in jars if not j.exists()]
    if missing:
        raise SparkSetupError(f"missing {', '.join(missing)}: run `make setup-spark`")
    return jars


def catalog_config(settings: Settings) -> dict[str, str]:
    """pyiceberg's SQL catalog (dlt's ``iceberg_catalog_config``): the SQLAlchemy URL and the lake."""
    uri = settings.iceberg_catalog
    parts = urlsplit(uri)
    if parts.scheme.startswith("postgresql"):
        password = settings.spark.catalog_password
        secret = f":{quote(password, safe='')}" if password else ""
        auth = f"{quote(parts.username, safe='')}{secret}@" if parts.username else ""
        uri = f"postgresql+psycopg://{auth}{parts.hostname}:{parts.port or 5432}{parts.path}"
    return {"type": "sql", "uri": uri, "warehouse": settings.iceberg_lake, "init_catalog_tables": "true"}


def jdbc_catalog(settings: Settings) -> dict[str, str]:
    """Spark's view of the same catalog: Iceberg's JDBC catalog, with pyiceberg's table layout."""
    parts = urlsplit(settings.iceberg_catalog)
    conf = {"type": "jdbc", "jdbc.schema-version": "V1", "warehouse": settings.iceberg_lake, "cache-enabled": "false"}
    if parts.scheme.startswith("postgresql"):
        conf["uri"] = f"jdbc:postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"
        if parts.username:
            conf["jdbc.user"] = parts.username
        if settings.spark.catalog_password:
            conf["jdbc.password"] = settings.spark.catalog_password
    else:
        # SQLite has one writer at a time: one catalog connection in Spark (dbt's threads take turns
        # for their commits instead of failing with SQLITE_BUSY), and a wait of up to a minute when
        # another process holds the file. Iceberg 1.10's check for its catalog tables leaves a
        # metadata ResultSet open: sqlite-jdbc then holds a read lock for the connection's life,
        # and pyiceberg (dlt's loads) and the publish's switch cannot commit beside a live
        # session. The tables are made by :func:`prepare_catalog` before a session starts instead.
        conf |= {
            "uri": f"jdbc:sqlite:{parts.path}",
            "clients": "1",
            "jdbc.busy_timeout": "60000",
            "jdbc.init-catalog-tables": "false",
        }
    return conf


def session_conf(settings: Settings) -> dict[str, str]:
    """The Spark configuration of the night's session (and of dbt-spark's ``session`` method):
    Iceberg's catalog as Spark's default catalog, UTC, no UI, nothing downloaded."""
    jars = [str(j) for j in spark_jars()]
    name = settings.spark.catalog_name
    conf = {
        "spark.master": settings.spark.master,
        "spark.app.name": "dusk",
        "spark.jars": ",".join(jars),
        "spark.driver.extraClassPath": ":".join(jars),
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        f"spark.sql.catalog.{name}": "org.apache.iceberg.spark.SparkCatalog",
        "spark.sql.defaultCatalog": name,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.catalogImplementation": "in-memory",  # no Hive metastore (no derby files)
        "spark.sql.warehouse.dir": str(settings.data_dir / "spark" / "spark-warehouse"),  # not the cwd
        "spark.ui.enabled": "false",
        "spark.driver.host": "127.0.0.1",  # only ever 127.0.0.1
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.driver.memory": "1g",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={spark_log_config(settings)}",
    }
    conf |= {f"spark.sql.catalog.{name}.{k}": v for k, v in jdbc_catalog(settings).items()}
    return conf


SPARK_LOG4J = """\
# Spark's own log (written by dusk): to <data dir>/logs/spark.log, never to the console, where a
# night's summary is what an operator reads; a failing query's message reaches the run's log
# through the runner and dbt anyway.
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{ISO8601}} %p %c{{1}}: %m%n%ex
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
"""


def spark_log_config(settings: Settings) -> Path:
    """The log4j2 configuration of the session's JVM (written on first use): Spark's log goes to
    ``<data dir>/logs/spark.log``, not to the console."""
    path = settings.data_dir / "spark" / "log4j2.properties"
    text = SPARK_LOG4J.format(path=settings.logs_dir / "spark.log")
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


# -- make setup-spark -----------------------------------------------------------------------------


def relocate_jackson(target: Path = RELOCATED_JACKSON) -> Path:
    """Build the shaded Jackson that Iceberg's runtime jar refers to but lacks, from pyspark's own
    Jackson jars, with Debian's jarjar (rule: ``com.fasterxml.jackson.** -> SHADED.@1``)."""
    import pyspark

    spark_jars_dir = Path(pyspark.__file__).parent / "jars"
    jarjar = Path("/usr/share/java/jarjar.jar")
    if not jarjar.exists():
        raise SparkSetupError("Debian's jarjar is missing: apt-get install libjarjar-java")
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "jackson.jar"
        with zipfile.ZipFile(merged, "w", zipfile.ZIP_DEFLATED) as out:
            seen: set[str] = set()
            for name in JACKSON:
                (source,) = spark_jars_dir.glob(f"jackson-{name}-2.*.jar")
                with zipfile.ZipFile(source) as jar:
                    for entry in jar.namelist():
                        # jarjar's ASM reads Java 8 classes; Jackson's Java 9 module descriptors are not needed
                        if entry in seen or entry.endswith("module-info.class") or "/versions/" in entry:
                            continue
                        seen.add(entry)
                        out.writestr(entry, jar.read(entry))
        rules = Path(tmp) / "rules.txt"
        rules.write_text(f"rule com.fasterxml.jackson.** {SHADED}.@1\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        subprocess.run(["java", "-jar", str(jarjar), "process", str(rules), str(merged), str(partial)], check=True)
        partial.replace(target)
    return target


def setup() -> None:
    """``make setup-spark``: Java, the JDBC drivers and the shaded Jackson, checked."""
    if shutil.which("java") is None:
        raise SparkSetupError("Spark needs Java 17 (apt-get install openjdk-17-jre-headless)")
    version = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    if not any(f'"{v}' in version for v in ("11", "17")):
        raise SparkSetupError(f"Spark 3.5 runs on Java 11 or 17; found {version}")
    JARS_DIR.mkdir(parents=True, exist_ok=True)
    for name, package in DEBIAN_JARS.items():
        source = Path("/usr/share/java") / name
        if not source.exists():
            raise SparkSetupError(f"{source} is missing: apt-get install {package}")
        shutil.copyfile(source.resolve(), JARS_DIR / name)
    relocate_jackson()
    with zipfile.ZipFile(RELOCATED_JACKSON) as jar:
        wanted = SHADED.replace(".", "/") + "/core/JsonFactoryBuilder.class"
        if wanted not in jar.namelist():
            raise SparkSetupError(f"{RELOCATED_JACKSON} lacks {wanted}: the relocation failed")
    print(f"Spark engine ready: {', '.join(str(j) for j in spark_jars())}")


# -- make spark-up / spark-down: a standalone cluster on 127.0.0.1 ---------------------------------

MASTER_PORT, THRIFT_PORT = 7077, 10000
DAEMONS = ("master", "worker", "thrift")


def cluster_dir(settings: Settings) -> Path:
    """Where the local cluster keeps its pid files, logs and the Thrift server's metastore."""
    return settings.data_dir / "spark"


def _wait_for_port(port: int, seconds: float, log: Path) -> None:
    import socket
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    raise SparkSetupError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f}s; see {log}")


def up(settings: Settings, master_port: int = MASTER_PORT, thrift_port: int = THRIFT_PORT) -> None:
    """Start a standalone master, a worker and a Thrift server (all on 127.0.0.1) from the pyspark
    wheel, on the Iceberg catalog of ``settings`` (PostgreSQL: a server shares it)."""
    import os

    import pyspark

    if not settings.iceberg_catalog.startswith("postgresql"):
        raise SparkSetupError(
            "a cluster shares its Iceberg catalog: set DUSK_ICEBERG_CATALOG_URI=postgresql://user@host:port/db"
        )
    prepare_catalog(settings)
    home = Path(pyspark.__file__).parent
    folder = cluster_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(folder)}
    master = f"spark://127.0.0.1:{master_port}"
    conf = {
        k: v for k, v in session_conf(settings).items() if k not in ("spark.master", "spark.sql.catalogImplementation")
    }
    jars = ",".join(str(j) for j in spark_jars())
    commands = {
        "master": [str(home / "bin/spark-class"), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                   "--port", str(master_port), "--webui-port", "0"],
        "worker": [str(home / "bin/spark-class"), "org.apache.spark.deploy.worker.Worker", master, "--host",
                   "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", "0"],
        "thrift": [str(home / "bin/spark-submit"), "--class",
                   "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2",
                   "--master", master, "--jars", jars, "--driver-class-path", conf["spark.driver.extraClassPath"],
                   *(x for k, v in conf.items() for x in ("--conf", f"{k}={v}")),
                   "--hiveconf", "hive.server2.thrift.bind.host=127.0.0.1",
                   "--conf", "spark.ui.enabled=false",
                   # one session for every connection: one catalog, one pool of catalog connections
                   "--conf", "spark.sql.hive.thriftServer.singleSession=true",
                   # one of the worker's two cores, so a session app (DUSK_SPARK_MASTER) gets the other
                   "--conf", "spark.cores.max=1", "--conf", "spark.executor.memory=768m",
                   "--hiveconf", f"hive.server2.thrift.port={thrift_port}", "spark-internal"],
    }  # fmt: skip
    ports = {"master": master_port, "worker": None, "thrift": thrift_port}
    for name in DAEMONS:
        pid_file, log = folder / f"{name}.pid", folder / f"{name}.log"
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            print(f"spark {name} already runs (pid {pid_file.read_text().strip()})")
            continue
        with log.open("ab") as out:
            process = subprocess.Popen(
                commands[name], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        pid_file.write_text(str(process.pid))
        port = ports[name]
        if port is not None:
            _wait_for_port(port, 180, log)
        print(f"spark {name} started (pid {process.pid}, log {log})")
    print(f"cluster ready: DUSK_SPARK_MASTER={master} or DUSK_SPARK_THRIFT=127.0.0.1:{thrift_port}")


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def down(settings: Settings) -> None:
    """Stop what :func:`up` started (its whole process group), the Thrift server first."""
    import os
    import signal
    import time

    for name in reversed(DAEMONS):
        pid_file = cluster_dir(settings) / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(60):
                if not _alive(pid):
                    break
                time.sleep(0.5)
            else:
                os.killpg(pid, signal.SIGKILL)
        pid_file.unlink()
        print(f"spark {name} stopped")


def prepare_catalog(settings: Settings) -> None:
    """Create the catalog's database (PostgreSQL, when missing; a SQLite file's folder), its tables
    in the layout dlt's pyiceberg writes, and the ``default`` namespace dbt-spark's Thrift
    connection selects."""
    config = catalog_config(settings)
    if config["uri"].startswith("sqlite:///"):
        Path(config["uri"].removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif config["uri"].startswith("postgresql"):
        import psycopg
        from psycopg import sql

        parts = urlsplit(config["uri"])
        database = parts.path.lstrip("/")
        admin = parts._replace(scheme="postgresql", path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as con:
            if not con.execute("select 1 from pg_database where datname = %s", [database]).fetchone():
                con.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    catalog = iceberg_catalog(settings)
    catalog.create_namespace_if_not_exists("default")
    catalog.engine.dispose()


def iceberg_catalog(settings: Settings) -> Any:
    """pyiceberg's handle on the catalog (the one dlt writes through); dispose of its engine."""
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(settings.spark.catalog_name, **catalog_config(settings))


def main(argv: list[str]) -> None:
    """``python -m dusk.spark [setup|up|down]`` (make setup-spark, spark-up, spark-down); ``up``
    takes its ports from SPARK_MASTER_PORT and SPARK_THRIFT_PORT (default 7077 and 10000)."""
    import os

    from dusk.settings import Settings

    command = argv[0] if argv else "setup"
    if command == "setup":
        setup()
    elif command == "up":
        ports = (
            int(os.environ.get("SPARK_MASTER_PORT", MASTER_PORT)),
            int(os.environ.get("SPARK_THRIFT_PORT", THRIFT_PORT)),
        )
        up(Settings.from_env(target="spark"), *ports)
    elif command == "down":
        down(Settings.from_env(target="spark"))
    else:
        raise SystemExit(f"usage: python -m dusk.spark [setup|up|down], not {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
