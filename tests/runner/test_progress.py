"""What a person sees: the run's JSON-lines log (secrets masked) and the progress bars."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from dusk.logfile import redact, run_log
from dusk.progress import RunProgress
from dusk.settings import secret_values


def test_secrets_are_masked_in_the_run_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__CRM__CREDENTIALS", "postgresql://etl:pg-canary-pw@db.internal:5432/crm")
    monkeypatch.setenv("DUSK_ALERT_WEBHOOK", "https://hooks.example/T1/B2/hook-canary")
    monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "tok-canary-123")
    path = tmp_path / "logs" / "run.jsonl"
    log = logging.getLogger("dusk.test")
    with run_log(path, "20300101T000000000000Z"):
        log.info("connecting to %s", "postgresql://etl:pg-canary-pw@db.internal:5432/crm")
        # a library's logging setup closes every handler of the process: the log goes on
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        log.warning("token tok-canary-123 refused by https://hooks.example/T1/B2/hook-canary")
        log.info("other url mysql://reader:unknown-pw@host/db", extra={"event": "x", "source": "crm"})
        try:
            raise RuntimeError("failed with pg-canary-pw")
        except RuntimeError:
            log.exception("boom")
    log.info("after the run: not in the file")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["level"] for e in lines] == ["info", "warning", "info", "error"]
    assert all(e["run_id"] == "20300101T000000000000Z" and e["logger"] == "dusk.test" for e in lines)
    assert lines[0]["message"] == "connecting to ***"  # the whole secret value
    assert lines[1]["message"] == "token *** refused by ***"
    assert lines[2]["message"] == "other url mysql://reader:***@host/db"
    assert lines[2]["event"] == "x" and lines[2]["source"] == "crm"
    assert "RuntimeError: failed with ***" in lines[3]["exception"]
    text = path.read_text()
    for canary in ("pg-canary-pw", "hook-canary", "tok-canary-123", "unknown-pw"):
        assert canary not in text
    assert "pg-canary-pw" in secret_values()
    assert redact("no secret here", secret_values()) == "no secret here"


def test_progress_bars_follow_sources_and_dbt_nodes() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with RunProgress(console=console, enabled=True) as progress:
        progress.start("source:shop", "ingest shop")
        progress.start("source:web", "ingest web")
        progress.finish("source:shop", "ok")
        progress.finish("source:web", "FAILED")
        progress.start("dbt", "dbt build, freshness, docs")
        on_event = progress.dbt_callback("dbt")

        def event(name: str, **data: object) -> SimpleNamespace:
            return SimpleNamespace(info=SimpleNamespace(name=name), data=SimpleNamespace(**data))

        on_event(event("LogStartLine", total=3))
        for node in ("stg_shop__orders", "orders", "unique_orders_order_id"):
            on_event(event("NodeFinished", node_info=SimpleNamespace(node_name=node)))
        task = progress.progress.tasks[2]
        assert (task.completed, task.total) == (3, 3)
        progress.finish("dbt", "ok")
    screen = out.getvalue()
    assert "ingest shop" in screen and "ingest web" in screen and "FAILED" in screen
    assert "3/3" in screen and "dbt build" in screen
    quiet = RunProgress(console=Console(file=io.StringIO()), enabled=None)  # not a terminal: no bars
    assert quiet.progress.disable
