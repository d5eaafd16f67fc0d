"""`dusk watch`: run the night when a new file lands in a landing folder (instead of, or besides,
cron). It polls the folders of the ``files`` sources: polling works on every file system,
network mounts included. A file must keep the same size and modification time for one
``settle`` period before it triggers a run, so a file being copied is not read half-written
(files named ``.*``, ``*.tmp`` or ``*.part`` are ignored anyway). Each run is a separate
``dusk run`` process with the usual lock and exit codes."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dusk.settings import PROJECT_DIR, Settings
from ingestion.declaration import SourceSpec

log = logging.getLogger(__name__)

Snapshot = dict[Path, tuple[int, int]]


def landing_files(specs: dict[str, SourceSpec], settings: Settings) -> Snapshot:
    """Size and modification time of every file in a landing folder that a table's pattern
    matches (the archive and files still being written left out)."""
    from ingestion.files.landing import ARCHIVE, in_flight, landing_dir

    found: Snapshot = {}
    for spec in specs.values():
        if spec.kind != "files":
            continue
        landing = landing_dir(spec, settings.landing_dir, PROJECT_DIR)
        for table in spec.tables:
            for path in landing.glob(table.pattern) if landing.exists() else []:
                if not path.is_file() or in_flight(path) or ARCHIVE in path.relative_to(landing).parts[:1]:
                    continue
                stat = path.stat()
                found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


def watch(
    specs: dict[str, SourceSpec],
    settings: Settings,
    interval: float,
    max_runs: int | None = None,
    run: Callable[[], int] | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Poll every ``interval`` seconds; run when files are new or changed since the last run and
    have settled. Returns the exit code of the last run (0 if none ran)."""
    run = run or (lambda: _run_subprocess(settings))
    handled: Snapshot = {}
    pending: Snapshot | None = None
    runs, code = 0, 0
    echo(f"watching the landing folders of {', '.join(s for s in specs if specs[s].kind == 'files') or 'no source'}")
    while max_runs is None or runs < max_runs:
        current = landing_files(specs, settings)
        changed = {p: v for p, v in current.items() if handled.get(p) != v}
        if changed and pending is not None and all(pending.get(p) == v for p, v in changed.items()):
            names = ", ".join(sorted(p.name for p in changed))
            echo(f"new or changed: {names}; running the night")
            code = run()
            if code == 4:
                echo("another run holds the lock; trying again at the next poll")
            else:
                echo(f"run ended with exit code {code}")
                handled = current
                runs += 1
            pending = None
        else:
            pending = changed or None  # settled if unchanged at the next poll
        time.sleep(interval)
    return code


def _run_subprocess(settings: Settings) -> int:
    """`dusk run` in a process of its own, on the same installation as this watch."""
    options = [
        "--data-dir",
        str(settings.data_dir),
        "--warehouse",
        str(settings.warehouse),
        "--target",
        settings.target,
    ]
    if settings.sources_file is not None:
        options += ["--sources-file", str(settings.sources_file)]
    options.append("--demo" if settings.demo else "--no-demo")
    return subprocess.run([sys.executable, "-m", "dusk", *options, "run"], cwd=PROJECT_DIR, check=False).returncode
