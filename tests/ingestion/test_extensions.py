"""DuckDB's extensions load from their wheels with DuckDB's signature check: once per file and
process, not at every connection (the check hashes the whole file), and again when the file
changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest

from ingestion import extensions


def test_an_extension_is_checked_once_and_again_when_its_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "sqlite_scanner.duckdb_extension"
    shutil.copyfile(extensions.extension_path("duckdb_extension_sqlite_scanner"), copy)
    monkeypatch.setattr(extensions, "extension_path", lambda module: copy)
    monkeypatch.setattr(extensions, "_VERIFIED", set())

    assert extensions.verified_config("any") == {}  # never checked: the first LOAD checks it
    first = duckdb.connect(config=extensions.verified_config("any"))
    extensions.load_extension(first, "any")
    assert extensions.verified_config("any") == {"allow_unsigned_extensions": True}
    later = duckdb.connect(config=extensions.verified_config("any"))
    extensions.load_extension(later, "any")
    loaded = "select count(*) from duckdb_extensions() where extension_name = 'sqlite_scanner' and loaded"
    assert later.execute(loaded).fetchone() == (1,)

    with copy.open("r+b") as f:  # the file changes after it was checked: checked again, and refused
        f.seek(copy.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert extensions.verified_config("any") == {}
    with pytest.raises(duckdb.Error, match=r"(?i)signature"):
        extensions.load_extension(duckdb.connect(config=extensions.verified_config("any")), "any")
