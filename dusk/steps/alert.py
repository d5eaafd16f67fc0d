"""Alerts: a Slack-compatible webhook on a failed or partial night, an SLA breach or an anomaly.

The URL is a secret (a Slack webhook URL lets anyone post): it comes from ``DUSK_ALERT_WEBHOOK``
or the git-ignored file ``<data dir>/secrets/alert_webhook``, and never appears in a log, the
ledger or the report. The message carries the run id, what failed and where to look. Sending is
retried on transient errors; an alert that cannot be sent is logged and recorded, but never
changes the night's outcome.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
import tenacity

from dusk.settings import Settings

if TYPE_CHECKING:
    from dusk.pipeline import RunResult

log = logging.getLogger(__name__)

ENV_VAR = "DUSK_ALERT_WEBHOOK"
TIMEOUT = 10.0
ATTEMPTS = 3


@dataclass
class AlertOutcome:
    """Whether tonight's alert was sent (and why not, when it was not)."""

    sent: bool
    reason: str


def webhook_url(settings: Settings) -> str | None:
    """The webhook URL from the environment or the secret file (None: alerts are off)."""
    url = os.environ.get(ENV_VAR, "").strip()
    if not url:
        path = settings.secrets_dir / "alert_webhook"
        url = path.read_text().strip() if path.exists() else ""
    return url or None


def reasons(result: RunResult) -> list[str]:
    """Why tonight deserves an alert (empty: it does not)."""
    why = []
    if result.status in ("failed", "partial"):
        why.append(f"run {result.status}")
    why += sorted({f"{f.check} {f.severity}" for f in result.findings})
    if result.publish_error:
        why.append("not published")
    return why


def message(result: RunResult, why: list[str]) -> dict[str, Any]:
    """The Slack-compatible payload: ``text`` (shown everywhere, also in notifications) and
    ``blocks`` (the same, laid out)."""
    from dusk.ledger import run_id

    rid = run_id(result)
    lines = [f"*dusk run {rid}: {result.status.upper()}* ({', '.join(why)})"]
    if result.error:
        lines.append(f"• error: {result.error}")
    for source in result.sources:
        if not source.ok and not source.skipped:
            lines.append(f"• source `{source.source}` failed after {source.attempts} attempt(s): {source.error}")
    dbt = result.dbt
    if dbt is not None:
        for node in dbt.failing_tests():
            kept = f" (rows in {node.failures_table})" if node.failures_table else ""
            lines.append(f"• test `{node.name}` {node.status}: {node.failures or 0} failing rows{kept}")
        for node in dbt.failing_nodes():
            lines.append(f"• {node.resource_type} `{node.name}` error: {(node.message or '')[:300]}")
        if dbt.error:
            lines.append(f"• dbt: {dbt.error}")
    for f in result.findings:
        lines.append(f"• {f.check} {f.severity} `{f.target}`: {f.message}")
    if result.publish_error:
        lines.append(f"• readers still see the last published night: {result.publish_error}")
    elif result.published is not None:
        lines.append(f"• published to {result.published.path}")
    where = [f"report {result.settings.report_path}", "`dusk status`"]
    if result.log_path is not None:
        where.insert(1, f"log {result.log_path}")
    lines.append("Where to look: " + ", ".join(where))
    text = "\n".join(lines)
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}],
        "run_id": rid,
        "status": result.status,
    }


class _Transient(Exception):
    pass


def send(result: RunResult) -> AlertOutcome:
    """Post tonight's alert if it deserves one and a webhook is configured."""
    why = reasons(result)
    if not why:
        return AlertOutcome(False, "nothing to alert")
    url = webhook_url(result.settings)
    if url is None:
        log.info("alert not sent: no webhook configured (%s)", ENV_VAR)
        return AlertOutcome(False, f"no webhook configured ({ENV_VAR})")
    payload = message(result, why)

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=5),
        retry=tenacity.retry_if_exception_type(_Transient),
        reraise=True,
    )
    def post() -> None:
        try:
            response = requests.post(url, json=payload, timeout=TIMEOUT)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(type(exc).__name__) from None  # the exception text holds the URL
        except requests.RequestException as exc:  # a malformed URL, too many redirects, ...
            raise RuntimeError(type(exc).__name__) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise RuntimeError(f"HTTP {response.status_code}")

    try:
        post()
    except (_Transient, RuntimeError) as exc:
        log.error("alert not sent: the webhook answered %s", exc)
        return AlertOutcome(False, f"the webhook failed: {exc}")
    log.info("alert sent (%s)", ", ".join(why))
    return AlertOutcome(True, ", ".join(why))
