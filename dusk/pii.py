"""The salt of the PII hashes: from DUSK_PII_SALT or a git-ignored secret file, into the warehouse.

dbt's `pii()` macro hashes columns tagged `pii` with ``sha256(salt || value)`` and reads the salt
from the warehouse table ``dusk_private.pii_salt``, so the salt never appears in compiled SQL,
dbt's logs or ``target/``. A different salt would silently re-hash every value (and version every
customer in the snapshot), so a warehouse built with one salt refuses another.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import duckdb

from dusk.settings import Settings

ENV_VAR = "DUSK_PII_SALT"
SCHEMA = "dusk_private"
TABLE = f"{SCHEMA}.pii_salt"


class SaltError(RuntimeError):
    """The salt is missing, unusable or differs from the warehouse's."""


def salt_file(settings: Settings) -> Path:
    """Where the runner keeps a generated salt when DUSK_PII_SALT is not set (git-ignored)."""
    return settings.secrets_dir / "pii_salt"


def read_salt(settings: Settings) -> str:
    """The configured salt: DUSK_PII_SALT, else the secret file (created with 256 random bits)."""
    value = os.environ.get(ENV_VAR)
    if value is None:
        path = salt_file(settings)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        value = path.read_text().strip()
    if len(value) < 16:
        raise SaltError(f"the PII salt ({ENV_VAR} or {salt_file(settings)}) must have at least 16 characters")
    return value


def ensure_salt(con: duckdb.DuckDBPyConnection, salt: str) -> bool:
    """Store the salt in the warehouse; True when it was stored now. Refuses a different salt."""
    con.execute(f"create schema if not exists {SCHEMA}")
    con.execute(f"create table if not exists {TABLE} (salt varchar not null)")
    stored = [r[0] for r in con.execute(f"select salt from {TABLE}").fetchall()]
    if stored == [salt]:
        return False
    if stored:
        raise SaltError(
            f"the PII salt differs from the one this warehouse was built with ({TABLE}); hashes would "
            f"change for every row. Restore {ENV_VAR} (or the secret file data/secrets/pii_salt), or start a "
            "new warehouse to rotate it."
        )
    con.execute(f"insert into {TABLE} values (?)", [salt])
    return True


def install_salt(settings: Settings) -> bool:
    """Put the configured salt into the DuckDB warehouse (idempotent)."""
    settings.warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.warehouse)) as con:
        return ensure_salt(con, read_salt(settings))
