"""Paths and settings of one installation, read from environment variables.

This module is the runner's only reader of the environment, and :func:`runtime_environment` the one
place that says what the runner writes into it for dlt and dbt (dbt's profile reads the warehouse
path from ``DUSK_WAREHOUSE``). Every setting has a default that works on a fresh clone, so
`make run` needs none of them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ingestion.dlt_settings import DLT_ENVIRONMENT

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    path = Path(value) if value else default
    return path if path.is_absolute() else (PROJECT_DIR / path)


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else Path.cwd() / path


def _severity(name: str, default: str) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in ("warn", "error"):
        raise ValueError(f"{name} must be warn or error, got {value!r}")
    return value


@dataclass(frozen=True)
class MonitorSettings:
    """Limits of the monitoring checks (dusk/monitor.py) and the severity each one raises."""

    anomaly_z: float = 3.0
    anomaly_min_history: int = 5
    anomaly_window: int = 14
    anomaly_severity: str = "warn"
    sla_hours: float = 26.0
    sla_severity: str = "warn"
    quarantine_max_share: float = 0.05
    quarantine_severity: str = "warn"

    @classmethod
    def from_env(cls) -> MonitorSettings:
        """Read DUSK_ANOMALY_*, DUSK_SLA_* and DUSK_QUARANTINE_*."""
        env = os.environ.get
        return cls(
            anomaly_z=float(env("DUSK_ANOMALY_Z", "3")),
            anomaly_min_history=max(2, int(env("DUSK_ANOMALY_MIN_HISTORY", "5"))),
            anomaly_window=max(2, int(env("DUSK_ANOMALY_WINDOW", "14"))),
            anomaly_severity=_severity("DUSK_ANOMALY_SEVERITY", "warn"),
            sla_hours=float(env("DUSK_SLA_HOURS", "26")),
            sla_severity=_severity("DUSK_SLA_SEVERITY", "warn"),
            quarantine_max_share=float(env("DUSK_QUARANTINE_MAX_SHARE", "0.05")),
            quarantine_severity=_severity("DUSK_QUARANTINE_SEVERITY", "warn"),
        )


@dataclass(frozen=True)
class Settings:
    """Where things live. Relative paths are taken from the project directory."""

    data_dir: Path
    warehouse: Path
    target_path: Path
    demo: bool
    demo_seed: int
    source_attempts: int = 3
    """Attempts per source when it fails transiently (DUSK_SOURCE_ATTEMPTS)."""
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
    def secrets_dir(self) -> Path:
        """Git-ignored secret files (the generated PII salt, optionally the alert webhook URL)."""
        return self.data_dir / "secrets"

    @property
    def pipelines_dir(self) -> Path:
        """dlt's working folder (its state is also kept in the warehouse)."""
        return self.data_dir / "dlt"

    @property
    def landing_dir(self) -> Path:
        """The default landing folder of file sources (``files.path`` in sources.yml overrides it)."""
        return self.data_dir / "landing"

    @property
    def demo_dir(self) -> Path:
        """Where the demo shop keeps its source database and ground truth."""
        return self.data_dir / "demo"

    @property
    def docs_path(self) -> Path:
        """The self-contained dbt docs page written by every run."""
        return self.target_path / "static_index.html"

    @classmethod
    def from_env(cls, data_dir: Path | None = None, warehouse: Path | None = None) -> Settings:
        """Read the settings from DUSK_* environment variables (``data_dir`` and ``warehouse``:
        the command line's, over DUSK_DATA_DIR and DUSK_WAREHOUSE)."""
        data_dir = _absolute(data_dir) if data_dir else _env_path("DUSK_DATA_DIR", Path("data"))
        return cls(
            data_dir=data_dir,
            warehouse=_absolute(warehouse) if warehouse else _env_path("DUSK_WAREHOUSE", data_dir / "warehouse.duckdb"),
            target_path=_env_path("DBT_TARGET_PATH", Path("target")),
            demo=os.environ.get("DUSK_DEMO", "1").lower() not in {"0", "false", "no"},
            demo_seed=int(os.environ.get("DUSK_DEMO_SEED", "42")),
            source_attempts=max(1, int(os.environ.get("DUSK_SOURCE_ATTEMPTS", "3"))),
            source_backoff=float(os.environ.get("DUSK_SOURCE_BACKOFF", "5")),
            served=_env_path("DUSK_SERVED", data_dir / "served.duckdb") if os.environ.get("DUSK_SERVED") else None,
            publish_schemas=tuple(
                s.strip()
                for s in os.environ.get("DUSK_PUBLISH_SCHEMAS", ",".join(cls.publish_schemas)).split(",")
                if s.strip()
            ),
            parallel_sources=max(1, int(os.environ.get("DUSK_PARALLEL_SOURCES", "2"))),
            monitor=MonitorSettings.from_env(),
            detected_at=_env_time("DUSK_DETECTED_AT"),
            sources_file=_env_path("DUSK_SOURCES_FILE", Path()) if os.environ.get("DUSK_SOURCES_FILE") else None,
            pii_salt=os.environ.get("DUSK_PII_SALT"),
            alert_webhook=os.environ.get("DUSK_ALERT_WEBHOOK", "").strip() or None,
        )


def _env_time(name: str) -> datetime | None:
    """An ISO 8601 time from the environment (UTC when it has no offset); None when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 time such as 2026-01-31T00:00:00Z, got {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def runtime_environment(settings: Settings) -> dict[str, str]:
    """What dlt and dbt read from the environment during a night: dbt's profile takes the
    warehouse path from ``DUSK_WAREHOUSE`` (so dlt and dbt write to the same file), and dlt the
    settings ingestion relies on (telemetry off among them; dbt's is off in dbt_project.yml)."""
    return {**{k: os.environ.get(k, v) for k, v in DLT_ENVIRONMENT.items()}, "DUSK_WAREHOUSE": str(settings.warehouse)}


def apply_runtime_environment(settings: Settings) -> None:
    """Write :func:`runtime_environment` into this process's environment (the one place that does)."""
    os.environ.update(runtime_environment(settings))


SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIALS|WEBHOOK|SALT|API_KEY", re.IGNORECASE)
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
