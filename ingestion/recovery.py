"""Repairs of what a killed run leaves in dlt's working folder, run before every ingest.

dlt's own recovery finishes pending load packages; these three cover the states it does not,
each found by the chaos suite (SIGKILL at random instants, tests/proof/test_chaos.py)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import dlt
from dlt.common.schema import Schema

log = logging.getLogger(__name__)

_ATOMIC_TEMP = re.compile(r"[0-9a-f]{16}")
"""dlt writes every file of its working folder (state, schemas, packages' state) to a temporary
file named by 8 random bytes in hex in the storage's root, then renames it."""


def drop_unfinished_writes(working_dir: Path) -> list[str]:
    """Remove the temporary files of dlt writes that a kill interrupted before their rename.

    Their target is intact (the rename never happened), so nothing is lost; but one left in
    ``schemas/`` is read as a schema named after it, and dlt's sync step, clearing the schema
    folder, fails on it (``FileNotFoundError: .../<hex>.schema.json``) at every later run
    (dlt's ``FileStorage.save_atomic`` leaves the temporary file behind on a kill)."""
    removed = []
    roots = [working_dir, *(p for p in working_dir.iterdir() if p.is_dir())] if working_dir.is_dir() else []
    for root in roots:
        for path in root.iterdir():
            if path.is_file() and _ATOMIC_TEMP.fullmatch(path.name):
                log.warning("pipeline folder %s: removing %s, a write interrupted by a kill", working_dir, path.name)
                path.unlink()
                removed.append(str(path.relative_to(working_dir)))
    return removed


def drop_normalized_leftovers(pipeline: dlt.Pipeline) -> list[str]:
    """Remove extracted packages that dlt had already normalized when the run was killed.

    dlt's normalize commits the normalized package, then deletes the extracted one; a SIGKILL
    during that delete leaves a half-deleted extracted package (e.g. no ``new_jobs``) whose rows are
    safe in the normalized or loaded package, and which would make every later normalize fail."""
    root = Path(pipeline.working_dir)
    extracted = root / "normalize" / "extracted"
    dropped = []
    for package in sorted(extracted.iterdir()) if extracted.exists() else []:
        committed = [root / "load" / stage / package.name for stage in ("normalized", "loaded")]
        if package.is_dir() and any(p.exists() for p in committed):
            log.warning(
                "pipeline=%s removing extracted package %s, normalized before a kill",
                pipeline.pipeline_name,
                package.name,
            )
            shutil.rmtree(package)
            dropped.append(package.name)
    return dropped


def adopt_package_schemas(pipeline: dlt.Pipeline) -> list[str]:
    """Make the schemas of extracted packages left by a killed run the pipeline's stored ones.

    dlt normalizes a package with the *stored* schema. A run killed after extracting but before
    saving its schema leaves the stored schema one run behind: e.g. a table whose first load was
    written as ``replace`` and is now declared ``merge`` would be replaced by the package's few
    changed rows. The package's own schema is what its rows were extracted for."""
    extracted = Path(pipeline.working_dir) / "normalize" / "extracted"
    adopted = []
    for package in sorted(extracted.iterdir()) if extracted.exists() else []:
        schema_file = package / "schema.json"
        if not schema_file.exists():
            continue
        schema = Schema.from_dict(json.loads(schema_file.read_text()))
        stored = pipeline.schemas.get(schema.name) if schema.name in pipeline.schemas else None
        newer = stored is None or (
            schema.version >= stored.version and schema.stored_version_hash != stored.stored_version_hash
        )
        if newer:
            pipeline.schemas.save_schema(schema)
            adopted.append(package.name)
    return adopted
