"""Shared fixtures: an isolated workspace (data dir, dbt target) and a way to run the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Workspace:
    """A data dir and dbt target dir of one's own, and the CLI run against them."""

    root: Path

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

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DUSK_", "SOURCES__"))}
        env.update(
            DUSK_DATA_DIR=str(self.data_dir),
            DBT_TARGET_PATH=str(self.root / "target"),
            DBT_LOG_PATH=str(self.root / "logs"),
            DUSK_DEMO_SEED="7",
            COLUMNS="200",
        )
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "dusk", *args],
            cwd=PROJECT_DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"dusk {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def last_run(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "runs" / "last_run.json").read_text())


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    yield Workspace(tmp_path)
