"""Paths and settings of one installation, read from environment variables.

Every setting has a default that works on a fresh clone, so `make run` needs none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    path = Path(value) if value else default
    return path if path.is_absolute() else (PROJECT_DIR / path)


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
        )


def quiet_telemetry() -> None:
    """Turn off dlt and dbt usage telemetry: nothing may reach the network at run time."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
