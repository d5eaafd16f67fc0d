"""Shared fixtures: an isolated workspace (data dir, dbt target) and a way to run the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

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


SERVERS = {
    "postgres": ("postgresql://postgres@127.0.0.1:5432/postgres", "postgresql://postgres@127.0.0.1:5432/{db}"),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:3306/test", "mysql+pymysql://root@127.0.0.1:3306/{db}"),
}


@pytest.fixture(params=sorted(SERVERS))
def shop_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database on each real server (PostgreSQL, MariaDB), dropped afterwards."""
    admin_url, url = SERVERS[request.param]
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        reason = f"{request.param} is not reachable at {admin.url.render_as_string(hide_password=True)}: {exc.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    db = f"dusk_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as con:
        con.execute(sa.text(f"create database {db}"))
    try:
        yield url.format(db=db)
    finally:
        with admin.connect() as con:
            if request.param == "postgres":
                con.execute(sa.text(f"drop database if exists {db} with (force)"))
            else:
                con.execute(sa.text(f"drop database if exists {db}"))
        admin.dispose()
