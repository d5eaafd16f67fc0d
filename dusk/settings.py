"""Paths and settings of one installation, read from environment variables.

Every setting has a default that works on a fresh clone, so `make run` needs none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    path = Path(value) if value else default
    return path if path.is_absolute() else (PROJECT_DIR / path)


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
    def from_env(cls) -> Settings:
        """Read the settings from DUSK_* environment variables."""
        data_dir = _env_path("DUSK_DATA_DIR", Path("data"))
        return cls(
            data_dir=data_dir,
            warehouse=_env_path("DUSK_WAREHOUSE", data_dir / "warehouse.duckdb"),
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


def quiet_telemetry() -> None:
    """Turn off dlt and dbt usage telemetry: nothing may reach the network at run time."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
