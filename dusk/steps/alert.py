"""The alert step: a Slack-compatible webhook on a failed or partial night, an SLA breach or an
anomaly; and the heartbeat, a ping at the end of every night for a dead-man's switch.

The URLs are secrets (a Slack webhook URL lets anyone post; a heartbeat URL lets anyone report a
night): they come from ``DUSK_ALERT_WEBHOOK`` / ``DUSK_HEARTBEAT_URL`` or the git-ignored files
``<data dir>/secrets/alert_webhook`` / ``heartbeat_url``, and never appear in a log, the ledger or
the report. The message carries the run id, what failed and where to look. Sending is retried on
transient errors; an alert or ping that cannot be sent is logged and recorded, but never changes
the night's outcome.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
import tenacity

from dusk import ledger
from dusk.present import diff_headline, diff_rows, problems
from dusk.record import AlertOutcome, RunResult
from dusk.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT = 10.0
ATTEMPTS = 3


def webhook_url(settings: Settings) -> str | None:
    """The webhook URL from the environment or the secret file (None: alerts are off)."""
    return _secret_url(settings.alert_webhook, settings, "alert_webhook")


def heartbeat_url(settings: Settings) -> str | None:
    """The heartbeat URL from the environment or the secret file (None: no heartbeat)."""
    return _secret_url(settings.heartbeat_url, settings, "heartbeat_url")


def _secret_url(given: str | None, settings: Settings, file_name: str) -> str | None:
    url = given or ""
    if not url:
        path = settings.secrets_dir / file_name
        url = path.read_text().strip() if path.exists() else ""
    return url or None


def reasons(result: RunResult) -> list[str]:
    """Why tonight deserves an alert (empty: it does not)."""
    why = []
    if result.status in ("failed", "partial", "stopped"):
        why.append(f"run {result.status}")
    why += sorted({f"{f.check} {f.severity}" for f in result.findings})
    if result.publish_error:
        why.append("not published")
    return why


def message(settings: Settings, result: RunResult, why: list[str]) -> dict[str, Any]:
    """The Slack-compatible payload: ``text`` (shown everywhere, also in notifications) and
    ``blocks`` (the same, laid out)."""
    lines = [f"*dusk run {result.run_id}: {result.status.upper()}* ({', '.join(why)})"]
    lines += ["• " + line.render("`{}`") for line in problems(result)]
    if result.diff:
        lines.append("• " + diff_headline(result.diff))
        rows = diff_rows(result.diff)
        for relation, before, after, added, removed, changed, share, columns in rows[:5]:
            counts = f"+{added} -{removed} ~{changed} ({share})"
            lines.append(f"  ◦ `{relation}`: {before} -> {after} rows, {counts} {columns}")
        if len(rows) > 5:
            lines.append(f"  ◦ and {len(rows) - 5} more (see the report)")
    if result.published is not None:
        lines.append(f"• published to {result.published.where}")
    where = [f"report {settings.report_path}", "`dusk status`"]
    if result.log_path is not None:
        where.insert(1, f"log {result.log_path}")
    lines.append("Where to look: " + ", ".join(where))
    text = "\n".join(lines)
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}],
        "run_id": result.run_id,
        "status": result.status,
    }


class _Transient(Exception):
    pass


def send(settings: Settings, result: RunResult) -> AlertOutcome:
    """Post tonight's alert if it deserves one and a webhook is configured."""
    why = reasons(result)
    if not why:
        return AlertOutcome(False, "nothing to alert")
    url = webhook_url(settings)
    if url is None:
        log.info("alert not sent: no webhook configured (DUSK_ALERT_WEBHOOK)")
        return AlertOutcome(False, "no webhook configured (DUSK_ALERT_WEBHOOK)")
    payload = message(settings, result, why)
    try:
        _post(url, json=payload)
    except (_Transient, RuntimeError) as exc:
        log.error("alert not sent: the webhook answered %s", exc)
        return AlertOutcome(False, f"the webhook failed: {exc}")
    log.info("alert sent (%s)", ", ".join(why))
    return AlertOutcome(True, ", ".join(why))


@tenacity.retry(
    stop=tenacity.stop_after_attempt(ATTEMPTS),
    wait=tenacity.wait_random_exponential(multiplier=0.5, max=5),
    retry=tenacity.retry_if_exception_type(_Transient),
    reraise=True,
)
def _post(url: str, **body: Any) -> None:
    """POST to a secret URL; errors name the status or the exception's kind, never the URL."""
    try:
        response = requests.post(url, timeout=TIMEOUT, **body)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(type(exc).__name__) from None  # the exception text holds the URL
    except requests.RequestException as exc:  # a malformed URL, too many redirects, ...
        raise RuntimeError(type(exc).__name__) from None
    if response.status_code == 429 or response.status_code >= 500:
        raise _Transient(f"HTTP {response.status_code}")
    if response.status_code >= 400:
        raise RuntimeError(f"HTTP {response.status_code}")


def heartbeat(settings: Settings, result: RunResult) -> str:
    """Ping the heartbeat URL at the end of a night, healthchecks.io's way: the URL itself when the
    night published (success or partial), ``<url>/fail`` when it did not; the body is one line.
    A monitor that stops hearing it (cron stopped, the machine is down, every run locked out)
    raises the alarm that no run can raise itself."""
    url = heartbeat_url(settings)
    if url is None:
        return "off"
    published = result.status in ("success", "partial")
    line = f"dusk run {result.run_id}: {result.status} in {result.seconds:.0f}s"
    try:
        _post(url if published else url.rstrip("/") + "/fail", data=line.encode())
    except Exception as exc:
        log.error("heartbeat not sent: %s", exc)
        return f"not sent: {exc}"
    log.info("heartbeat sent (%s)", result.status)
    return "sent"


def alert(settings: Settings, con: ledger.Connection, record: RunResult) -> AlertOutcome:
    """The alert step: send tonight's alert; a failure to send never changes the night's outcome."""
    try:
        outcome = send(settings, record)
    except Exception as exc:
        log.exception("alert not sent")
        outcome = AlertOutcome(False, f"alerting failed: {type(exc).__name__}")
    ledger.step(con, record, "alert", None, "sent" if outcome.sent else outcome.reason, 0.0)
    return outcome
