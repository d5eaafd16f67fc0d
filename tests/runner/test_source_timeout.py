"""DUSK_SOURCE_TIMEOUT: a source that hangs (here: a database server that accepts the connection
and never answers, with a connect timeout longer than the night) is given up after the limit,
and the other sources are loaded, built and published: a partial night, not a held lock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import Workspace, delete_demo_stream
from tests.helpers import project_copy
from tests.ingestion.test_timeouts import silent_server

pytestmark = pytest.mark.e2e

HUNG_DBT_SOURCE = """
version: 2
sources:
  - name: hung
    schema: raw_hung
    tables:
      - name: accounts
"""


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    project = project_copy(tmp_path / "project", {"models/staging/hung/_hung__sources.yml": HUNG_DBT_SOURCE})
    (tmp_path / "ws").mkdir()
    workspace = Workspace(tmp_path / "ws", project=project)
    yield workspace
    if workspace.sources_file.exists():
        delete_demo_stream(workspace.sources_file)


def test_a_hung_source_is_given_up_and_the_others_publish(ws: Workspace) -> None:
    spec = yaml.safe_load(ws.sources_file.read_text())
    spec["sources"]["hung"] = {
        "kind": "database",
        "database": {"connect_timeout": 900},  # longer than the night: only the source's limit ends it
        "tables": {"accounts": {"primary_key": "id", "cursor": "updated_at"}},
    }
    ws.sources_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    with silent_server() as port:
        started = time.monotonic()
        out = ws.cli(
            "run",
            check=False,
            env_extra={
                "DUSK_SOURCE_TIMEOUT": "8",
                "DUSK_SOURCE_ATTEMPTS": "1",
                "SOURCES__HUNG__CREDENTIALS": f"postgresql://dusk@127.0.0.1:{port}/crm",
            },
        )
        took = time.monotonic() - started
    assert out.returncode == 3, out.stdout + out.stderr
    assert took < 300, took
    record = ws.last_run()
    status = {s["source"]: (s["ok"], s["error"]) for s in record["sources"]}
    assert status["hung"][0] is False
    assert "ran past its time limit (DUSK_SOURCE_TIMEOUT=8 s) and was given up" in status["hung"][1]
    assert all(ok for name, (ok, _) in status.items() if name != "hung")
    assert record["status"] == "partial" and record["published"] is not None
    assert (ws.data_dir / "run.lock").read_text() == ""
