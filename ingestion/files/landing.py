"""The landing folder: which files are new, changed, still being written or already loaded; the archive."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dlt
from dlt.common.destination.exceptions import DestinationUndefinedEntity

from ingestion.declaration import SourceSpec
from ingestion.extensions import raw_client
from ingestion.files.parse import FileError

LEDGER = "_files"
IN_FLIGHT_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", ".crdownload")
"""Files being written (uploads name them so until they are complete): never read."""
ARCHIVE = "archive"
"""Loaded files move to this sub-folder of the landing folder (when ``archive: true``)."""


@dataclass
class LandedFile:
    """One file of the landing folder and what to do with it."""

    table: str
    path: Path
    name: str
    """The path relative to the landing folder: the file's identity with its hash."""
    sha256: str
    size: int


@dataclass
class FilesPlan:
    """What one run loads from the landing folder."""

    landing: Path
    new: list[LandedFile] = field(default_factory=list)
    seen: list[LandedFile] = field(default_factory=list)
    """Files whose (name, hash) raw already holds: skipped (and archived, when asked)."""
    failures: list[str] = field(default_factory=list)
    """One message per file that could not be loaded."""
    loaded: list[LandedFile] = field(default_factory=list)
    """Files whose rows (and ledger row) go into this run's load package."""
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)


def landing_dir(spec: SourceSpec, default: Path, project_dir: Path) -> Path:
    """The source's landing folder: ``files.path`` (relative to the project) or ``default``."""
    configured = spec.option("path")
    if not configured:
        return default
    path = Path(configured)
    return path if path.is_absolute() else project_dir / path


def in_flight(path: Path) -> bool:
    """A file still being written by the usual conventions (hidden, or a temporary suffix)."""
    return path.name.startswith(".") or path.suffix.lower() in IN_FLIGHT_SUFFIXES


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ledger(pipeline: dlt.Pipeline) -> set[tuple[str, str]]:
    try:
        with raw_client(pipeline) as client:
            table = client.make_qualified_table_name(LEDGER)
            rows = client.execute_sql(f"select file, sha256 from {table}")
    except DestinationUndefinedEntity:
        return set()
    return {(str(f), str(h)) for f, h in rows or []}


def plan_files(pipeline: dlt.Pipeline, spec: SourceSpec, landing: Path) -> FilesPlan:
    """Find every table's files in the landing folder and split them into new and loaded."""
    if not landing.is_dir():
        raise FileError(f"source {spec.name!r}: the landing folder {landing} does not exist")
    loaded = _ledger(pipeline)
    plan = FilesPlan(landing)
    claimed: dict[Path, str] = {}
    archived = spec.option("read_archive")  # another environment of the installation: prod archives them
    for table in spec.tables:
        paths = sorted(landing.glob(table.pattern))
        if archived:
            paths += sorted((landing / ARCHIVE).glob(table.pattern))
        for path in paths:
            if not path.is_file() or in_flight(path):
                continue
            if ARCHIVE in path.relative_to(landing).parts[:1] and not archived:
                continue
            if path in claimed:
                raise FileError(
                    f"source {spec.name!r}: file {path.name} matches the patterns of tables "
                    f"{claimed[path]!r} and {table.name!r}"
                )
            claimed[path] = table.name
            name = str(path.relative_to(landing))
            landed = LandedFile(table.name, path, name, _sha256(path), path.stat().st_size)
            (plan.seen if (name, landed.sha256) in loaded else plan.new).append(landed)
    return plan


def archive(plan: FilesPlan) -> list[Path]:
    """Move loaded (and already-loaded) files to the landing folder's archive sub-folder."""
    moved = []
    for landed in plan.loaded + plan.seen:
        target = plan.landing / ARCHIVE / landed.name
        if target.exists():
            target = target.with_name(f"{landed.sha256[:12]}-{target.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(landed.path), target)
        moved.append(target)
    return moved
