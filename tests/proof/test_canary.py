"""Secrets canary: a canary password or token configured for every source that takes one (the
shop's database URL, the payments API token, the NATS URL), for the alert webhook and as the PII
salt; after a failing and a passing night, no canary appears in any log, run record, ledger row,
dlt trace or state, dbt artifact, report or served file — raw, URL-encoded or base64."""

from __future__ import annotations

import base64
import json
import secrets
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import SERVERS, Workspace, _service_missing, write_tally
from tests.helpers import WebhookReceiver

pytestmark = [pytest.mark.canary, pytest.mark.e2e]


@pytest.fixture
def shop_database() -> Iterator[str]:
    admin = sa.create_engine(SERVERS["postgres"][0], isolation_level="AUTOCOMMIT")
    db = f"dusk_canary_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as con:
            con.execute(sa.text(f"create database {db}"))
    except sa.exc.OperationalError as exc:
        _service_missing(f"PostgreSQL is not reachable: {exc.orig}")
    try:
        yield db
    finally:
        with admin.connect() as con:
            con.execute(sa.text(f"drop database if exists {db} with (force)"))
        admin.dispose()


def forms(secret: str) -> set[str]:
    """The ways a secret can leak: as is, URL-encoded, base64 (standard and URL-safe)."""
    raw = secret.encode()
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


def leaks(path: Path, canaries: dict[str, str]) -> list[str]:
    data = path.read_bytes()
    return [
        f"{name} ({form!r}) in {path}"
        for name, secret in canaries.items()
        for form in forms(secret)
        if form.encode() in data
    ]


def test_no_secret_appears_anywhere(
    engine_workspace: Workspace, shop_database: str, capsys: pytest.CaptureFixture
) -> None:
    """On each warehouse engine; on PostgreSQL the warehouse's password is a canary too (the local
    server trusts its logins, so any password gets in)."""
    ws = engine_workspace
    engine = ws.engine
    canaries = {
        "shop password": f"CanaryPw-{secrets.token_hex(6)}",
        "payments token": f"CanaryTok-{secrets.token_hex(6)}",
        "nats password": f"CanaryNats-{secrets.token_hex(6)}",
        "webhook": f"CanaryHook-{secrets.token_hex(6)}",
        "heartbeat": f"CanaryBeat-{secrets.token_hex(6)}",
        "pii salt": f"CanarySalt-{secrets.token_hex(12)}",
    }
    if ws.pg_database:
        canaries["warehouse password"] = f"CanaryWh-{secrets.token_hex(6)}"
    shop_url = f"postgresql://postgres:{canaries['shop password']}@127.0.0.1:5432/{shop_database}"
    with WebhookReceiver() as hook:
        env = {
            "SOURCES__PAYMENTS__TOKEN": canaries["payments token"],
            "SOURCES__WEB__SERVERS": f"nats://dusk:{canaries['nats password']}@127.0.0.1:4222",
            "DUSK_ALERT_WEBHOOK": f"{hook.url}/{canaries['webhook']}",
            "DUSK_HEARTBEAT_URL": f"{hook.url}/{canaries['heartbeat']}",
            "DUSK_PII_SALT": canaries["pii salt"],
            "DUSK_VERBOSE": "1",
        }
        if ws.pg_database:
            env["DUSK_PG_PASSWORD"] = canaries["warehouse password"]
        # a failing night: the shop's database does not exist (the error names the source, not the password)
        missing = shop_url.replace(shop_database, shop_database + "_missing")
        failed = ws.cli("run", check=False, env_extra={**env, "SOURCES__SHOP__CREDENTIALS": missing})
        assert failed.returncode == 1, failed.stdout
        assert "source 'shop'" in ws.last_run()["error"] and f"{shop_database}_missing" in ws.last_run()["error"]
        passed = ws.cli("run", check=False, env_extra={**env, "SOURCES__SHOP__CREDENTIALS": shop_url})
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert hook.posts, "the failing night alerted"
        beats = [p.rsplit(canaries["heartbeat"], 1)[1] for p in hook.paths if canaries["heartbeat"] in p]
        assert beats == ["/fail", ""], f"each night pinged the heartbeat, the failed one its /fail: {beats}"
    record = ws.last_run()
    web = next(s for s in record["sources"] if s["source"] == "web")
    assert web["ok"] and not web["skipped"], "the canary NATS URL was used"
    assert next(s for s in record["sources"] if s["source"] == "shop")["tables"][0]["loaded"] > 0

    found: list[str] = []
    checked = 0
    for text in (failed.stdout, failed.stderr, passed.stdout, passed.stderr, json.dumps(hook.posts)):
        found += [
            f"{name} in the output or the alert" for name, s in canaries.items() if any(f in text for f in forms(s))
        ]
    for root in (ws.data_dir, ws.root / "target", ws.root / "logs"):
        for path in root.rglob("*"):
            if not path.is_file() or path.parent.name == "demo" or path.name.startswith("pii_salt"):
                continue  # the demo's own databases; the salt's own secret file
            # the warehouse keeps the salt, by design, in dusk_private (checked below)
            private = path == ws.warehouse or (ws.spark and "dusk_private" in path.parts)
            secrets_here = {k: v for k, v in canaries.items() if not (k == "pii salt" and private)}
            found += leaks(path, secrets_here)
            checked += 1
    with ws.read() as wh:
        tables = wh.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_catalog = current_database() "
            "and table_schema not in ('dusk_private', 'information_schema', 'pg_catalog')"
        ).fetchall()
        for schema, table in tables:
            text = str(wh.execute(f'select * from "{schema}"."{table}"').fetchall())
            found += [f"{n} in {schema}.{table}" for n, s in canaries.items() if any(f in text for f in forms(s))]
    assert not found, "secrets leaked:\n" + "\n".join(found)
    searched = f"{checked} files and {len(tables)} warehouse tables searched"
    line = f"canary on {engine}: {len(canaries)} secrets, {searched}, 0 leaks"
    with capsys.disabled():
        print("\n" + line)
    write_tally(f"canary-{engine}", line)
