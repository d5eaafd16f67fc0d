"""`dusk watch`: a new file in a landing folder runs the night once it has settled."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dusk.settings import Settings
from dusk.watch import landing_files, watch
from tests.conftest import Workspace
from tests.helpers import sources

pytestmark = pytest.mark.e2e


def test_a_settled_new_file_runs_the_night_once(tmp_path: Path) -> None:
    settings = Settings(tmp_path, tmp_path / "w.duckdb", tmp_path / "t", True, 1)
    specs = sources()
    landing = settings.landing_dir
    landing.mkdir(parents=True)
    (landing / "notes.txt").write_text("not a table's file")
    (landing / ".marketing_spend_2026-03-01.csv").write_text("hidden: still being written")
    calls: list[set[str]] = []
    codes = iter([4, 0, 0])  # the first attempt finds the lock taken

    def run() -> int:
        calls.append({p.name for p in landing_files(specs, settings)})
        code = next(codes)
        if code == 0:  # the run archives what it loaded
            (landing / "archive").mkdir(exist_ok=True)
            for path in landing.glob("marketing_spend_*.csv"):
                shutil.move(path, landing / "archive" / path.name)
        return code

    (landing / "marketing_spend_2026-03-02.csv").write_text("spend_date,channel,spend,clicks,currency_code\n")
    messages: list[str] = []
    code = watch(specs, settings, interval=0.01, max_runs=1, run=run, echo=messages.append)
    assert code == 0
    assert calls == [{"marketing_spend_2026-03-02.csv"}] * 2  # retried after the lock, then ran
    assert any("another run holds the lock" in m for m in messages)
    assert any("new or changed: marketing_spend_2026-03-02.csv" in m for m in messages)
    assert landing_files(specs, settings) == {}  # archived files and the archive folder are not watched


def test_watch_runs_the_real_night_when_a_file_lands(workspace: Workspace) -> None:
    ws = workspace
    landing = ws.data_dir / "landing"
    landing.mkdir(parents=True)
    (landing / "marketing_spend_2026-03-01.csv").write_text(
        "spend_date,channel,spend,clicks,currency_code\n2026-03-01,search,12.50,30,USD\n"
    )
    out = ws.cli("watch", "--interval", "0.2", "--max-runs", "1")
    assert "new or changed: marketing_spend_2026-03-01.csv; running the night" in out.stdout
    assert "run ended with exit code 0" in out.stdout
    assert ws.last_run()["status"] == "success"
    assert (landing / "archive" / "marketing_spend_2026-03-01.csv").exists()
