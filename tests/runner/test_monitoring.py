"""Monitoring and alerts as the on-call engineer meets them: a volume anomaly and an SLA breach
arrive at a (local) Slack-compatible webhook with the run id, what failed and where to look; the
HTML report shows them and renders in a real browser."""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import subprocess
import urllib.parse
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from dusk.record import Finding
from dusk.steps.audit import volume
from dusk.steps.publish import published_run
from tests.conftest import Workspace
from tests.helpers import LEDGER_STEPS, WebhookReceiver

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def fake_history(ws: Workspace, nights: int, orders: int) -> None:
    """Earlier nights in the ledger (between the first run and now), each loading about
    ``orders`` shop orders: the history tonight's volume is compared with."""
    with duckdb.connect(str(ws.warehouse)) as con:
        (first,) = con.execute("select min(started_at) from dusk_ledger.runs").fetchone()
        for i in range(nights):
            at = first + timedelta(seconds=i + 1)
            rid = f"{at:%Y%m%dT%H%M%S%fZ}"
            con.execute("insert into dusk_ledger.runs values (?, 'success', ?, 10, null, null, 'run')", [rid, at])
            step = f"insert into dusk_ledger.steps {LEDGER_STEPS} values (?, 'ingest', 'shop', 'ok', 1, 1.0)"
            con.execute(step, [rid])
            con.execute(
                "insert into dusk_ledger.source_tables values (?, 'shop', 'orders', ?, 0, 0, ?)",
                [rid, orders + i % 3, orders + i % 3],
            )


def test_anomaly_and_sla_breach_are_alerted_and_reported(workspace: Workspace) -> None:
    ws = workspace
    with WebhookReceiver(fail_first=1) as hook:
        env = {"DUSK_ALERT_WEBHOOK": hook.url, "DUSK_SOURCE_ATTEMPTS": "1"}
        ws.cli("run", env_extra=env)
        assert hook.posts == []  # a clean first night alerts nobody

        fake_history(ws, nights=8, orders=3000)
        ws.cli("simulate", "--days", "1")
        out = ws.cli("run", env_extra=env)  # a warning: the night succeeds and is published
        record = ws.last_run()
        assert record["status"] == "success" and record["published"] is not None
        (finding,) = [f for f in record["findings"] if f["target"] == "shop.orders"]
        assert finding["check"] == "volume" and finding["severity"] == "warn" and finding["value"] < -3
        assert "volume warn: shop.orders" in " ".join(out.stdout.split())
        # the receiver answered 503 first: the alert was retried and arrived once
        assert len(hook.paths) == 2 and len(hook.posts) == 1
        alert = hook.posts[0]
        assert alert["status"] == "success" and alert["run_id"] and alert["run_id"] in out.stdout
        assert "volume warn" in alert["text"] and "`shop.orders`" in alert["text"] and "z-score" in alert["text"]
        assert "Where to look: report" in alert["text"] and "dusk status" in alert["text"]
        assert alert["blocks"][0]["text"]["type"] == "mrkdwn"

        # the source breaks, and its last good read is 60 hours old (past dbt's error_after, 50 h):
        # the night fails, is not published, and alerts
        published = published_run(ws.data_dir / "served.duckdb")
        with duckdb.connect(str(ws.warehouse)) as wh:
            wh.execute("update dusk_ledger.runs set started_at = started_at - interval 60 hour")
        with sqlite3.connect(ws.shop_db) as shop:
            shop.execute("alter table orders rename to orders_old")
        failed = ws.cli("run", check=False, env_extra=env)
        assert failed.returncode == 1, failed.stdout
        assert published_run(ws.data_dir / "served.duckdb") == published
        alert = hook.posts[-1]
        assert alert["status"] == "failed"
        assert "freshness_sla error" in alert["text"] and "`shop`" in alert["text"]
        assert "its dbt source's error_after is 50 h" in alert["text"]
        assert "source `shop` failed" in alert["text"] and "orders" in alert["text"]
        assert "readers still see the last published night" in alert["text"]

    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        checks = wh.execute("select check_name, severity, target from dusk_ledger.findings order by run_id").fetchall()
        assert ("volume", "warn", "shop.orders") in checks and ("freshness_sla", "error", "shop") in checks
        assert (
            wh.execute("select count(*) from dusk_ledger.steps where step = 'alert' and status = 'sent'").fetchone()[0]
            == 2
        )

    # the webhook URL is a secret: it is in no log, run record, ledger or report
    secret = "canary-webhook-secret"
    forms = (secret, urllib.parse.quote(hook.url, safe=""), base64.b64encode(hook.url.encode()).decode())
    for path in [*ws.data_dir.rglob("*.json*"), ws.data_dir / "report" / "index.html", *ws.root.glob("logs/*")]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not any(f in text for f in forms), f"the webhook URL leaked into {path}"
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        for table in ("runs", "steps", "findings"):
            assert secret not in str(wh.execute(f"select * from dusk_ledger.{table}").fetchall())

    report = ws.cli("report")
    assert f"Report: {ws.data_dir / 'report' / 'index.html'}" in report.stdout
    assert_report_renders(ws, ws.root / "report.png")


def assert_report_renders(ws: Workspace, screenshot: Path) -> None:
    """The report in headless Chromium: its DOM has every section, the plots and the findings,
    and a screenshot shows a real page (not blank)."""
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (make setup-browser)")
        pytest.skip("chromium is not installed (make setup-browser installs Debian's chromium)")
    page = (ws.data_dir / "report" / "index.html").as_uri()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--user-data-dir=" + str(ws.root / "chromium"),
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=True
    )
    html = dom.stdout
    sections = ("last-run", "what-happened", "findings", "tests", "runs", "rows", "durations", "quarantine")
    for section in (*sections, "freshness", "history"):
        assert f'id="{section}"' in html, section
    # what happened, rendered as the summary and the alert render it (one presenter)
    assert "freshness_sla error: <code>shop</code>:" in html and "source <code>shop</code> failed after" in html
    assert html.count("<svg") >= 5
    assert 'id="last-status">FAILED<' in html
    assert "freshness_sla" in html and "error_after is 50 h" in html
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={screenshot}", "--window-size=1200,2200", page],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image, ImageStat

    with Image.open(screenshot) as image:
        assert image.size == (1200, 2200)
        spread = ImageStat.Stat(image.convert("L")).stddev[0]
        colours = len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])
    assert spread > 20 and colours > 50, f"the screenshot looks blank (sd {spread:.1f}, {colours} colours)"


def test_volume_needs_history_and_flags_a_silent_table(tmp_path: Path) -> None:
    """The z-score: no finding without enough history; a table that always loads 4 rows is
    flagged when it loads none (the standard deviation is floored at one row)."""
    from dusk.record import RunResult
    from dusk.settings import Settings
    from dusk.warehouse import ensure_ledger
    from ingestion.result import SourceResult, TableStats

    settings = Settings(tmp_path, tmp_path / "w.duckdb", tmp_path / "t", False, 1)
    con = duckdb.connect(str(settings.warehouse))
    ensure_ledger(con)

    def tonight(loaded: int) -> list[Finding]:
        result = RunResult(started_at=datetime(2030, 1, 1))
        result.sources = [SourceResult("files", True, 1.0, tables=[TableStats("spend", loaded=loaded)])]
        return volume(con, result, settings.monitor)

    for night in range(7):
        rid = f"2029010{night}T000000000000Z"
        con.execute("insert into dusk_ledger.runs values (?, 'success', now(), 1, null, null, 'run')", [rid])
        con.execute(f"insert into dusk_ledger.steps {LEDGER_STEPS} values (?, 'ingest', 'files', 'ok', 1, 1.0)", [rid])
        con.execute(
            "insert into dusk_ledger.source_tables values (?, 'files', 'spend', 4, 0, 0, ?)",
            [rid, 400 if night == 0 else 4],
        )
        if night == 3:
            assert tonight(0) == []  # 3 nights after the first load: not enough history yet
    assert tonight(4) == []
    (finding,) = tonight(0)
    assert finding.target == "files.spend" and finding.value == -4.0 and "z-score -4.0" in finding.message
    # a backfill run's volume is not compared
    con.execute("update dusk_ledger.runs set mode = 'backfill 2029-01-01..2029-01-02'")
    assert tonight(0) == []
    con.close()


def test_an_alert_that_cannot_be_sent_never_fails_the_night(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dataclasses import replace

    from dusk.record import DbtResult, RunResult
    from dusk.settings import Settings
    from dusk.steps.alert import send
    from ingestion.result import SourceResult

    settings = Settings(tmp_path, tmp_path / "w.duckdb", tmp_path / "t", False, 1)
    result = RunResult(started_at=datetime(2030, 1, 1))
    result.sources = [SourceResult("crm", False, 1.0, error="source 'crm': connection refused")]
    quiet = RunResult(started_at=datetime(2030, 1, 1), dbt=DbtResult(ok=True, seconds=1.0))
    quiet.sources = [SourceResult("crm", True, 1.0)]
    assert send(settings, result).reason == "no webhook configured (DUSK_ALERT_WEBHOOK)"
    (settings.secrets_dir).mkdir(parents=True)
    with WebhookReceiver(fail_first=10) as hook:
        (settings.secrets_dir / "alert_webhook").write_text(hook.url + "\n")  # the secret file works too
        outcome = send(settings, result)
        assert not outcome.sent and outcome.reason == "the webhook failed: HTTP 503" and len(hook.paths) == 3
        hook.failures_left = 0
        assert send(settings, quiet).reason == "nothing to alert" and len(hook.paths) == 3
        assert send(settings, result).sent and "source `crm` failed" in hook.posts[-1]["text"]
    monkeypatch.setenv("DUSK_ALERT_WEBHOOK", "http://[::1:canary-webhook-secret")
    configured = replace(settings, alert_webhook=Settings.from_env().alert_webhook)  # DUSK_ALERT_WEBHOOK
    assert send(configured, result).reason == "the webhook failed: InvalidURL"
    assert "canary-webhook-secret" not in caplog.text
