"""Paths and settings of one installation, read from environment variables.

This module is the runner's only reader of the environment, and :func:`runtime_environment` the one
place that says what the runner writes into it for dlt and dbt (dbt's profile reads the warehouse
path from ``DUSK_WAREHOUSE``). Every setting has a default that works on a fresh clone, so
`make run` needs none of them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from ingestion.dlt_settings import DLT_ENVIRONMENT

PROJECT_DIR = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting's value is not one dusk can use; the message names the variable and the fix."""


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    path = Path(value) if value else default
    return path if path.is_absolute() else (PROJECT_DIR / path)


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else Path.cwd() / path


def _severity(name: str, default: str) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in ("warn", "error"):
        raise SettingsError(f"{name} must be warn or error, got {value!r}")
    return value


def _share(name: str) -> float | None:
    """A share between 0 and 1 from the environment; None when unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise SettingsError(f"{name} must be a share between 0 and 1 (0.2 is 20 %), got {text!r}")
    return value


def _sql_name(name: str, default: str, what: str) -> str:
    """A setting that becomes part of SQL names, checked (lower-case letters, digits, ``_``)."""
    value = os.environ.get(name, default)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", value):
        raise SettingsError(f"{name} must be {what}, got {value!r}")
    return value


@dataclass(frozen=True)
class Retention:
    """How many days each kind of history is kept (0: for ever); see dusk/steps/prune.py."""

    runs_days: float = 90.0
    dlt_days: float = 30.0
    archive_days: float = 0.0
    ledger_days: float = 0.0

    @classmethod
    def from_env(cls) -> Retention:
        """Read DUSK_KEEP_RUNS_DAYS, DUSK_KEEP_DLT_DAYS, DUSK_KEEP_ARCHIVE_DAYS, DUSK_KEEP_LEDGER_DAYS."""
        values = {}
        for name, default in (("runs", "90"), ("dlt", "30"), ("archive", "0"), ("ledger", "0")):
            variable = f"DUSK_KEEP_{name.upper()}_DAYS"
            text = os.environ.get(variable, default)
            try:
                days = float(text)
            except ValueError:
                days = -1.0
            if days < 0:
                raise SettingsError(f"{variable}={text!r}: a number of days >= 0 (0 keeps for ever)")
            values[f"{name}_days"] = days
        return cls(**values)


@dataclass(frozen=True)
class MonitorSettings:
    """Limits of the monitoring checks (dusk/monitor.py) and the severity each one raises."""

    anomaly_z: float = 3.0
    anomaly_min_history: int = 5
    anomaly_window: int = 14
    anomaly_severity: str = "warn"
    sla_hours: float = 26.0
    """``dusk status --check``: the longest a published night may be old (DUSK_SLA_HOURS)."""
    quarantine_max_share: float = 0.05
    quarantine_severity: str = "warn"
    diff: bool = True
    """Compare what tonight would publish with what readers have (DUSK_DIFF; dusk.steps.diff)."""
    diff_max_changed_share: float | None = None
    """The data diff's gate for a relation whose dbt ``meta`` sets none (DUSK_DIFF_MAX_CHANGED_SHARE;
    unset: no gate)."""
    diff_severity: str = "warn"
    """What a relation past its gate raises when its ``meta`` says nothing (DUSK_DIFF_SEVERITY)."""

    @classmethod
    def from_env(cls) -> MonitorSettings:
        """Read DUSK_ANOMALY_*, DUSK_SLA_*, DUSK_QUARANTINE_* and DUSK_DIFF*."""
        env = os.environ.get
        return cls(
            anomaly_z=float(env("DUSK_ANOMALY_Z", "3")),
            anomaly_min_history=max(2, int(env("DUSK_ANOMALY_MIN_HISTORY", "5"))),
            anomaly_window=max(2, int(env("DUSK_ANOMALY_WINDOW", "14"))),
            anomaly_severity=_severity("DUSK_ANOMALY_SEVERITY", "warn"),
            sla_hours=float(env("DUSK_SLA_HOURS", "26")),
            quarantine_max_share=float(env("DUSK_QUARANTINE_MAX_SHARE", "0.05")),
            quarantine_severity=_severity("DUSK_QUARANTINE_SEVERITY", "warn"),
            diff=env("DUSK_DIFF", "1").strip().lower() not in {"0", "false", "no", "off"},
            diff_max_changed_share=_share("DUSK_DIFF_MAX_CHANGED_SHARE"),
            diff_severity=_severity("DUSK_DIFF_SEVERITY", "warn"),
        )


PROD = "prod"
"""The environment readers read (the default); others (``dev``, ``ci``) are for checking changes."""

ENGINES = ("duckdb", "postgres", "spark")
"""The warehouse engines (``DUSK_TARGET``); each is also a target of the dbt profile."""


@dataclass(frozen=True)
class PostgresSettings:
    """The PostgreSQL warehouse (``DUSK_TARGET=postgres``): the server and database dlt loads raw
    into and dbt builds in (the dbt profile's ``postgres`` target reads the same variables)."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    database: str = "dusk"
    password: str | None = field(default=None, repr=False)
    """DUSK_PG_PASSWORD (dbt reads it as DBT_ENV_SECRET_PG_PASSWORD, which dbt masks in its logs)."""
    served_prefix: str = "served_"
    """Readers' schemas are the published schemas with this prefix (DUSK_PG_SERVED_PREFIX)."""
    lock_timeout: float = 10.0
    """Seconds the publish waits for a lock a reader holds before it gives up (DUSK_PG_LOCK_TIMEOUT)."""

    @classmethod
    def from_env(cls) -> PostgresSettings:
        """Read DUSK_PG_*."""
        env = os.environ.get
        prefix = _sql_name("DUSK_PG_SERVED_PREFIX", "served_", "a lower-case SQL name prefix")
        return cls(
            host=env("DUSK_PG_HOST", "127.0.0.1"),
            port=int(env("DUSK_PG_PORT", "5432")),
            user=env("DUSK_PG_USER", "postgres"),
            database=env("DUSK_PG_DATABASE", "dusk"),
            password=env("DUSK_PG_PASSWORD") or env("DBT_ENV_SECRET_PG_PASSWORD") or None,
            served_prefix=prefix,
            lock_timeout=float(env("DUSK_PG_LOCK_TIMEOUT", "10")),
        )

    def url(self, database: str | None = None, password: bool = True) -> str:
        """A libpq URL of the warehouse (or of ``database`` on the same server); the password only
        with ``password`` (never in a message)."""
        secret = f":{quote(self.password, safe='')}" if password and self.password else ""
        return f"postgresql://{quote(self.user, safe='')}{secret}@{self.host}:{self.port}/{database or self.database}"


@dataclass(frozen=True)
class SparkSettings:
    """The Spark warehouse (``DUSK_TARGET=spark``): Spark 3.5 with Apache Iceberg tables in a catalog
    that dlt (pyiceberg) and Spark share. The defaults are the embedded one: an in-process
    ``local[2]`` session and a SQLite catalog file under ``$DUSK_DATA_DIR/iceberg`` (no server)."""

    master: str = "local[2]"
    """Where the night's Spark session runs (DUSK_SPARK_MASTER): ``local[n]`` in-process, or a
    standalone cluster's ``spark://host:port``."""
    thrift: str | None = None
    """A Spark Thrift server's ``host:port`` (DUSK_SPARK_THRIFT): dbt and the runner send their SQL
    there instead of starting a session of their own."""
    catalog_uri: str | None = field(default=None, repr=False)
    """The Iceberg JDBC catalog as a SQLAlchemy URL, ``sqlite:////path`` or
    ``postgresql://user[:password]@host:port/db`` (DUSK_ICEBERG_CATALOG_URI; None: the SQLite file
    ``iceberg/catalog.db`` under the data folder). A Thrift server or a cluster needs PostgreSQL."""
    lake: str | None = None
    """Where Iceberg writes the tables' files (DUSK_ICEBERG_WAREHOUSE; a folder or ``file://``
    URL, default ``iceberg/warehouse`` under the data folder); every node of a cluster must see it."""
    catalog_password: str | None = field(default=None, repr=False)
    """The catalog database's password (DUSK_ICEBERG_CATALOG_PASSWORD), never in the URI."""
    catalog_name: str = "dusk"
    """The catalog's name in Spark and in the catalog database (DUSK_ICEBERG_CATALOG_NAME)."""
    served_prefix: str = "served_"
    """Readers' namespaces are the published ones with this prefix (DUSK_SPARK_SERVED_PREFIX)."""
    keep_retired: int = 1
    """Nights a retired served table is kept for readers still reading it (DUSK_SPARK_KEEP_RETIRED)."""

    @classmethod
    def from_env(cls) -> SparkSettings:
        """Read DUSK_SPARK_* and DUSK_ICEBERG_*."""
        env = os.environ.get
        prefix = _sql_name("DUSK_SPARK_SERVED_PREFIX", "served_", "a lower-case SQL name prefix")
        uri = env("DUSK_ICEBERG_CATALOG_URI", "").strip() or None
        if uri and not re.match(r"(sqlite|postgresql)(\+\w+)?://", uri):
            raise SettingsError(
                "DUSK_ICEBERG_CATALOG_URI must be sqlite:////<path> or postgresql://user@host:port/database "
                f"(Iceberg's JDBC catalog), got {uri.split('://')[0]}://..."
            )
        thrift, master = env("DUSK_SPARK_THRIFT", "").strip() or None, env("DUSK_SPARK_MASTER", "local[2]").strip()
        if (thrift or not master.startswith("local")) and not (uri or "").startswith("postgresql"):
            raise SettingsError(
                "a Spark cluster or Thrift server (DUSK_SPARK_MASTER, DUSK_SPARK_THRIFT) shares the Iceberg catalog "
                "with this machine: set DUSK_ICEBERG_CATALOG_URI=postgresql://user@host:port/database"
            )
        name = _sql_name("DUSK_ICEBERG_CATALOG_NAME", "dusk", "a lower-case SQL name")
        return cls(
            master=master,
            thrift=thrift,
            catalog_uri=uri,
            catalog_password=env("DUSK_ICEBERG_CATALOG_PASSWORD") or None,
            lake=env("DUSK_ICEBERG_WAREHOUSE", "").strip() or None,
            catalog_name=name,
            served_prefix=prefix,
            keep_retired=max(0, int(env("DUSK_SPARK_KEEP_RETIRED", "1"))),
        )


@dataclass(frozen=True)
class Settings:
    """Where things live. Relative paths are taken from the project directory."""

    data_dir: Path
    warehouse: Path
    target_path: Path
    demo: bool
    demo_seed: int
    demo_scale: int = 1
    """The demo's size as a multiple of the default (DUSK_DEMO_SCALE): 100 gives ~100k customers,
    ~300k orders, ~750k order lines, and each simulated day changes as much more."""
    source_attempts: int = 3
    """Attempts per source when it fails transiently (DUSK_SOURCE_ATTEMPTS)."""
    run_timeout: float | None = None
    """The whole night's time limit in seconds (DUSK_RUN_TIMEOUT; None or 0: none)."""
    source_timeout: float | None = None
    """The time limit of each source's ingestion, retries included, in seconds
    (DUSK_SOURCE_TIMEOUT; None or 0: none): past it the source is given up and the night goes on."""
    min_free_mb: float = 200.0
    """A night does not start when the data dir, the DuckDB warehouse's or dbt's target folder
    has less free space, in MB (DUSK_MIN_FREE_MB; 0: no check)."""
    retention: Retention = field(default_factory=Retention)
    """How long run records, logs, dlt's packages, archived files and ledger history are kept."""
    model_timeout: float | None = None
    """The time limit of each dbt node (model, snapshot, test, seed) in seconds
    (DUSK_MODEL_TIMEOUT; None or 0: none)."""
    source_backoff: float = 5.0
    """Seconds before the first retry, doubled each time, with jitter (DUSK_SOURCE_BACKOFF)."""
    served: Path | None = None
    """The DuckDB file readers use, replaced whole when a night passed (DUSK_SERVED)."""
    publish_schemas: tuple[str, ...] = ("marts", "snapshots", "staging", "seeds", "dusk_ledger")
    """The warehouse schemas copied to the served file (DUSK_PUBLISH_SCHEMAS, comma-separated)."""
    parallel_sources: int = 2
    """Sources extracted at the same time (DUSK_PARALLEL_SOURCES); loads into DuckDB take turns."""
    monitor: MonitorSettings = MonitorSettings()
    detected_at: datetime | None = None
    """The time a run stamps on the rows key-diff finds gone or back (DUSK_DETECTED_AT); None is
    the real clock. For simulations and replays whose source timestamps are not today's."""
    sources_file: Path | None = None
    """The declaration of the sources (DUSK_SOURCES_FILE; default ingestion/sources.yml)."""
    pii_salt: str | None = field(default=None, repr=False)
    """The PII hashes' salt (DUSK_PII_SALT); None: the generated secret file."""
    alert_webhook: str | None = field(default=None, repr=False)
    """The alert webhook URL (DUSK_ALERT_WEBHOOK); None: the secret file, if any."""
    heartbeat_url: str | None = field(default=None, repr=False)
    """The dead-man's switch's ping URL (DUSK_HEARTBEAT_URL); None: the secret file, if any."""
    metrics_file: Path | None = None
    """Where each night's Prometheus metrics are written (DUSK_METRICS_FILE; default
    ``<data dir>/metrics/dusk.prom``; None: not written, DUSK_METRICS=0)."""
    pushgateway_url: str | None = field(default=None, repr=False)
    """The Prometheus Pushgateway the metrics are pushed to (DUSK_PUSHGATEWAY_URL); None: the
    secret file, if any."""
    lineage_dir: Path | None = None
    """Where each night's OpenLineage events are written, a file per night (default
    ``<data dir>/lineage``; None: not written, DUSK_OPENLINEAGE=0 or an OpenLineage URL)."""
    openlineage_url: str | None = field(default=None, repr=False)
    """An OpenLineage receiver (Marquez) the events are sent to instead (DUSK_OPENLINEAGE_URL)."""
    openlineage_api_key: str | None = field(default=None, repr=False)
    """Its API key, sent as a bearer token (DUSK_OPENLINEAGE_API_KEY)."""
    target: str = "duckdb"
    """The warehouse engine (DUSK_TARGET): one of :data:`ENGINES`."""
    postgres: PostgresSettings = PostgresSettings()
    """The PostgreSQL warehouse, when ``target`` is ``postgres``."""
    spark: SparkSettings = SparkSettings()
    """The Spark warehouse, when ``target`` is ``spark``."""
    full_build_every: timedelta | None = timedelta(days=7)
    """A night builds every node when the last such night is older (DUSK_FULL_BUILD_DAYS; 0: only
    with ``--full``); the nights between build what changed."""
    env: str = PROD
    """The environment (DUSK_ENV or ``--env``): ``prod``, or ``dev``, ``ci`` or another name, each
    with a warehouse of its own (see :meth:`from_env`)."""
    installation_dir: Path | None = None
    """The installation's data dir (DUSK_DATA_DIR): prod's, and the parent of every other
    environment's; None: ``data_dir``."""
    prod_warehouse: Path | None = None
    """Prod's DuckDB warehouse file, from another environment (None: this is prod)."""
    prod_served: Path | None = None
    """Prod's served DuckDB file, from another environment (None: this is prod)."""

    @property
    def base_dir(self) -> Path:
        """The installation's data dir, shared by its environments (prod's data dir)."""
        return self.installation_dir or self.data_dir

    @property
    def prod_state_dir(self) -> Path:
        """Prod's build state: what ``--defer`` and ``state:`` selectors of another environment
        compare with (prod's own :attr:`state_dir`)."""
        return self.base_dir / "state"

    @property
    def state_dir(self) -> Path:
        """What the last nights built (dbt's manifest, each node's inputs): see dusk.steps.changes."""
        return self.data_dir / "state"

    @property
    def iceberg_catalog(self) -> str:
        """The Iceberg catalog's SQLAlchemy URL (the configured one, else the SQLite file)."""
        return self.spark.catalog_uri or f"sqlite:///{self.data_dir / 'iceberg' / 'catalog.db'}"

    @property
    def iceberg_lake(self) -> str:
        """The ``file://`` URL (or the configured URL) of the Iceberg tables' files."""
        lake = self.spark.lake or str(self.data_dir / "iceberg" / "warehouse")
        return lake if "://" in lake else f"file://{_absolute(Path(lake))}"

    @property
    def warehouse_label(self) -> str:
        """Where the warehouse is, for people (the engine's file or server, never a password)."""
        if self.target == "postgres":
            return self.postgres.url(password=False)
        if self.target == "spark":
            where = f"thrift://{self.spark.thrift}" if self.spark.thrift else self.spark.master
            catalog = URL_PASSWORD.sub(r"\g<scheme>\g<user>@", self.iceberg_catalog)
            return f"spark {where}, iceberg catalog {catalog}"
        return str(self.warehouse)

    @property
    def served_path(self) -> Path:
        """The served file (default: served.duckdb beside the warehouse)."""
        return self.served or self.warehouse.with_name("served.duckdb")

    @property
    def logs_dir(self) -> Path:
        """One structured (JSON lines) log file per run: <run id>.jsonl."""
        return self.data_dir / "logs"

    @property
    def report_path(self) -> Path:
        """The static HTML report, rewritten by every run and by `dusk report`."""
        return self.data_dir / "report" / "index.html"

    @property
    def spec_path(self) -> Path:
        """The pipeline's specification as of the last night (`dusk spec`, with this ledger)."""
        return self.data_dir / "spec" / "pipeline.md"

    @property
    def secrets_dir(self) -> Path:
        """Git-ignored secret files (the generated PII salt, optionally the alert webhook URL),
        shared by the environments: the same salt hashes the same values the same way in each."""
        return self.base_dir / "secrets"

    @property
    def column_lineage_path(self) -> Path:
        """Each model column's origins, as the audit last traced them (``columns.json``)."""
        return self.data_dir / "lineage" / "columns.json"

    @property
    def pushgateway(self) -> str | None:
        """The Pushgateway URL: DUSK_PUSHGATEWAY_URL, else the secret file ``pushgateway_url``
        (a URL may carry a token); None: no push."""
        if self.pushgateway_url:
            return self.pushgateway_url
        path = self.secrets_dir / "pushgateway_url"
        return (path.read_text().strip() or None) if path.exists() else None

    @property
    def pipelines_dir(self) -> Path:
        """dlt's working folder (its state is also kept in the warehouse)."""
        return self.data_dir / "dlt"

    @property
    def landing_dir(self) -> Path:
        """The default landing folder of file sources (``files.path`` in sources.yml overrides
        it), shared by the environments (each keeps its own ledger of the files it loaded)."""
        return self.base_dir / "landing"

    @property
    def demo_dir(self) -> Path:
        """Where the demo shop keeps its source database and ground truth (the environments'
        one source system)."""
        return self.base_dir / "demo"

    @property
    def docs_path(self) -> Path:
        """The self-contained dbt docs page written by every run."""
        return self.target_path / "static_index.html"

    @classmethod
    def from_env(
        cls,
        data_dir: Path | None = None,
        warehouse: Path | None = None,
        target: str | None = None,
        env: str | None = None,
    ) -> Settings:
        """Read the settings from DUSK_* environment variables (``data_dir``, ``warehouse``,
        ``target`` and ``env``: the command line's, over DUSK_DATA_DIR, DUSK_WAREHOUSE, DUSK_TARGET
        and DUSK_ENV).

        ``prod`` is the installation as it is. Another environment ``<env>`` keeps everything of
        its own under ``<data dir>/env/<env>/`` (its DuckDB warehouse ``<env>.duckdb``, served
        copy, dlt state, build state, runs, logs, report) with dbt's target folder
        ``<target>/env/<env>``, and on PostgreSQL the database ``<database>_<env>``; it shares
        prod's sources, landing folders and secrets (the PII salt)."""
        base = _absolute(data_dir) if data_dir else _env_path("DUSK_DATA_DIR", Path("data"))
        target = (target or os.environ.get("DUSK_TARGET") or "duckdb").strip().lower()
        if target not in ENGINES:
            raise SettingsError(f"DUSK_TARGET must be one of {', '.join(ENGINES)}, got {target!r}")
        env = (env or os.environ.get("DUSK_ENV") or PROD).strip().lower()
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", env):
            raise SettingsError(f"DUSK_ENV must be prod or a lower-case name such as dev or ci, got {env!r}")
        prod_warehouse = _absolute(warehouse) if warehouse else _env_path("DUSK_WAREHOUSE", base / "warehouse.duckdb")
        prod_served = _env_path("DUSK_SERVED", base / "served.duckdb") if os.environ.get("DUSK_SERVED") else None
        target_path = _env_path("DBT_TARGET_PATH", Path("target"))
        postgres = PostgresSettings.from_env()
        data_dir = base
        if env != PROD:
            data_dir = base / "env" / env
            if prod_warehouse.stem == env:
                raise SettingsError(
                    f"the environment {env!r} would share its DuckDB database name with prod's {prod_warehouse}: "
                    "name the environment otherwise"
                )
            target_path = target_path / "env" / env
            postgres = replace(postgres, database=f"{postgres.database}_{env}")
        return cls(
            target=target,
            postgres=postgres,
            spark=SparkSettings.from_env() if target == "spark" else SparkSettings(),
            data_dir=data_dir,
            warehouse=prod_warehouse if env == PROD else data_dir / f"{env}.duckdb",
            target_path=target_path,
            env=env,
            installation_dir=None if env == PROD else base,
            prod_warehouse=None if env == PROD else prod_warehouse,
            prod_served=None if env == PROD else (prod_served or prod_warehouse.with_name("served.duckdb")),
            demo=os.environ.get("DUSK_DEMO", "1").lower() not in {"0", "false", "no"},
            demo_seed=int(os.environ.get("DUSK_DEMO_SEED", "42")),
            demo_scale=_demo_scale(),
            source_attempts=max(1, int(os.environ.get("DUSK_SOURCE_ATTEMPTS", "3"))),
            run_timeout=float(os.environ.get("DUSK_RUN_TIMEOUT") or 0) or None,
            model_timeout=float(os.environ.get("DUSK_MODEL_TIMEOUT") or 0) or None,
            retention=Retention.from_env(),
            min_free_mb=float(os.environ.get("DUSK_MIN_FREE_MB", "200")),
            source_timeout=float(os.environ.get("DUSK_SOURCE_TIMEOUT") or 0) or None,
            source_backoff=float(os.environ.get("DUSK_SOURCE_BACKOFF", "5")),
            served=prod_served if env == PROD else None,
            publish_schemas=tuple(
                s.strip()
                for s in os.environ.get("DUSK_PUBLISH_SCHEMAS", ",".join(cls.publish_schemas)).split(",")
                if s.strip()
            ),
            parallel_sources=_parallel_sources(target),
            monitor=MonitorSettings.from_env(),
            detected_at=_env_time("DUSK_DETECTED_AT"),
            sources_file=_env_path("DUSK_SOURCES_FILE", Path()) if os.environ.get("DUSK_SOURCES_FILE") else None,
            pii_salt=os.environ.get("DUSK_PII_SALT"),
            alert_webhook=os.environ.get("DUSK_ALERT_WEBHOOK", "").strip() or None,
            heartbeat_url=os.environ.get("DUSK_HEARTBEAT_URL", "").strip() or None,
            metrics_file=_metrics_file(data_dir),
            pushgateway_url=os.environ.get("DUSK_PUSHGATEWAY_URL", "").strip() or None,
            lineage_dir=_lineage_dir(data_dir),
            openlineage_url=(os.environ.get("DUSK_OPENLINEAGE_URL", "").strip() or None) if _lineage_on() else None,
            openlineage_api_key=os.environ.get("DUSK_OPENLINEAGE_API_KEY", "").strip() or None,
            full_build_every=_full_build_every(),
        )


def _metrics_file(data_dir: Path) -> Path | None:
    """DUSK_METRICS_FILE (default ``<data dir>/metrics/dusk.prom``); None when DUSK_METRICS=0."""
    if os.environ.get("DUSK_METRICS", "1").strip().lower() in {"0", "false", "no"}:
        return None
    if os.environ.get("DUSK_METRICS_FILE", "").strip():
        return _env_path("DUSK_METRICS_FILE", Path())
    return data_dir / "metrics" / "dusk.prom"


def _demo_scale() -> int:
    """DUSK_DEMO_SCALE (default 1), a whole number >= 1."""
    text = os.environ.get("DUSK_DEMO_SCALE", "").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise SettingsError(f"DUSK_DEMO_SCALE={text!r}: a whole number >= 1 (the demo's size as a multiple)")
    return int(text)


def _lineage_dir(data_dir: Path) -> Path | None:
    """``<data dir>/lineage``; None when DUSK_OPENLINEAGE=0, or when events go to a receiver."""
    if not _lineage_on():
        return None
    return None if os.environ.get("DUSK_OPENLINEAGE_URL", "").strip() else data_dir / "lineage"


def _lineage_on() -> bool:
    """DUSK_OPENLINEAGE (default on)."""
    return os.environ.get("DUSK_OPENLINEAGE", "1").strip().lower() not in {"0", "false", "no"}


def _full_build_every() -> timedelta | None:
    """DUSK_FULL_BUILD_DAYS (default 7; 0: never by itself)."""
    days = float(os.environ.get("DUSK_FULL_BUILD_DAYS", "").strip() or 7)
    return timedelta(days=days) if days > 0 else None


def _parallel_sources(target: str) -> int:
    """DUSK_PARALLEL_SOURCES; one at a time on Spark with the embedded SQLite catalog, whose single
    writer refuses two Iceberg commits at once ("database is locked")."""
    wanted = max(1, int(os.environ.get("DUSK_PARALLEL_SOURCES", "2")))
    embedded = target == "spark" and not os.environ.get("DUSK_ICEBERG_CATALOG_URI", "").startswith("postgresql")
    return 1 if embedded else wanted


def _env_time(name: str) -> datetime | None:
    """An ISO 8601 time from the environment (UTC when it has no offset); None when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"{name} must be an ISO 8601 time such as 2026-01-31T00:00:00Z, got {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def runtime_environment(settings: Settings) -> dict[str, str]:
    """What dlt and dbt read from the environment during a night: dbt's profile takes its target
    from ``DUSK_TARGET`` and the warehouse from ``DUSK_WAREHOUSE`` or ``DUSK_PG_*`` (so dlt and dbt
    write to the same place), and dlt the settings ingestion relies on (telemetry off among them;
    dbt's is off in dbt_project.yml)."""
    pg = settings.postgres
    env = {
        **{k: os.environ.get(k, v) for k, v in DLT_ENVIRONMENT.items()},
        "DUSK_TARGET": settings.target,
        "DUSK_WAREHOUSE": str(settings.warehouse),
    }
    if settings.target == "postgres":
        env |= {"DUSK_PG_HOST": pg.host, "DUSK_PG_PORT": str(pg.port), "DUSK_PG_USER": pg.user}
        env |= {"DUSK_PG_DATABASE": pg.database, "DBT_ENV_SECRET_PG_PASSWORD": pg.password or ""}
    if settings.target == "spark":
        env |= _spark_environment(settings)
    if settings.target == "duckdb":
        env["DUSK_DBT_ATTACH"] = repr(prod_attachment(settings))  # a Python literal: the profile's as_native reads it
    return env


def prod_attachment(settings: Settings) -> list[dict[str, object]]:
    """Outside prod on DuckDB: prod's served file, attached read-only to dbt's connections under
    the name of prod's warehouse database, the name prod's manifest gives its relations; so
    ``--defer`` reads prod's published data (never prod's warehouse, which a night holds).
    Nothing until prod has published."""
    served, warehouse = settings.prod_served, settings.prod_warehouse
    if served is None or warehouse is None or not served.exists():
        return []
    return [{"path": str(served), "alias": warehouse.stem, "read_only": True}]


def _spark_environment(settings: Settings) -> dict[str, str]:
    """dlt's Iceberg catalog (pyiceberg's SQL catalog, under Spark's catalog name) and the dbt
    profile's ``spark`` target: a Thrift server's address, or the session's Spark configuration."""
    from dusk.spark import catalog_config, session_conf

    spark = settings.spark
    env = {
        "ICEBERG_CATALOG__ICEBERG_CATALOG_NAME": spark.catalog_name,
        "ICEBERG_CATALOG__ICEBERG_CATALOG_TYPE": "sql",
        # the catalog database's password may be in it: a SECRET-named variable, masked by dbt and the log
        "DBT_ENV_SECRET_ICEBERG_CATALOG": json.dumps(catalog_config(settings)),
        "DUSK_SPARK_METHOD": "thrift" if spark.thrift else "session",
        "SPARK_LOCAL_IP": "127.0.0.1",  # the JVM binds there, and does not warn that the host name is a loopback
    }
    if settings.iceberg_catalog.startswith("sqlite"):
        env["LOAD__WORKERS"] = "1"  # dlt's load jobs commit one at a time to SQLite's single writer
    env["ICEBERG_CATALOG__ICEBERG_CATALOG_CONFIG"] = env["DBT_ENV_SECRET_ICEBERG_CATALOG"]
    if spark.thrift:
        host, _, port = spark.thrift.rpartition(":")
        env |= {"DUSK_SPARK_HOST": host or "127.0.0.1", "DUSK_SPARK_PORT": port or "10000"}
    else:
        # the runner's session is made first and dbt-spark's getOrCreate shares it: the profile's copy
        # (for the plain dbt CLI) leaves out the catalog database's password
        conf = {k: v for k, v in session_conf(settings).items() if not k.endswith(".jdbc.password")}
        env["DUSK_SPARK_CONF"] = json.dumps(conf)
    return env


def apply_runtime_environment(settings: Settings) -> None:
    """Write :func:`runtime_environment` into this process's environment (the one place that does)."""
    os.environ.update(runtime_environment(settings))


SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIALS|WEBHOOK|HEARTBEAT|SALT|API_KEY", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I)


def secret_values() -> list[str]:
    """Values of the environment's secret-looking variables (at least 4 characters long), and the
    passwords in them: what the log writer masks."""
    values = []
    for name, value in os.environ.items():
        if SECRET_NAME.search(name) and len(value) >= 4:
            values.append(value)
            password = URL_PASSWORD.search(value)
            if password and len(password["password"]) >= 4:
                values.append(password["password"])
    return sorted(set(values), key=len, reverse=True)
