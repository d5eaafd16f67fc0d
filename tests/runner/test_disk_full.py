"""A full disk under the data directory (a small tmpfs): one clear error, whatever can still be
recorded and alerted is, nothing half-written is left, and the night after the space is freed
succeeds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Workspace, delete_demo_stream
from tests.helpers import WebhookReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 128 MB tmpfs of the test's own (needs root: a newcomer's laptop skips, CI fails)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        reason = f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_mb: float) -> Path:
    """A ballast file that leaves about ``leave_mb`` free."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free - int(leave_mb * 1e6)
    subprocess.run(["fallocate", "-l", str(max(free, 0)), str(ballast)], check=True)
    return ballast


def run(ws: Workspace, hook: WebhookReceiver, min_free_mb: str) -> subprocess.CompletedProcess[str]:
    env = {"DUSK_ALERT_WEBHOOK": f"{hook.url}/alerts", "DUSK_MIN_FREE_MB": min_free_mb}
    return ws.cli("run", check=False, env_extra=env)


def records_whole(ws: Workspace) -> list[str]:
    """Every run record's id; each file parses (none is empty or cut short)."""
    ids = []
    for path in sorted((ws.data_dir / "runs").iterdir()):
        assert not path.name.startswith("."), f"a temporary file was left: {path}"
        ids.append(json.loads(path.read_text())["run_id"])
    return ids


def test_a_full_disk_is_one_clear_error_and_leaves_nothing_half_written(small_disk: Path) -> None:
    (small_disk / "ws").mkdir()
    ws = Workspace(small_disk / "ws")
    try:
        with WebhookReceiver() as hook:
            first = run(ws, hook, "10")
            assert first.returncode == 0, first.stdout + first.stderr
            published = ws.last_run()["run_id"]

            ballast = fill(small_disk, leave_mb=2)
            refused = run(ws, hook, "10")  # too little space to start: refused before anything is written
            out = refused.stdout + refused.stderr
            assert refused.returncode == 1, out
            assert "MB free at" in out and "(DUSK_MIN_FREE_MB=10)" in out and "the night did not start" in out, out
            assert "Traceback" not in out, out
            assert hook.posts and "MB free at" in hook.posts[-1]["text"]
            refusal = ws.last_run()  # the record still fitted
            assert refusal["status"] == "failed" and "the night did not start" in refusal["error"]
            assert refusal["published"] is None and published in str(
                json.loads((ws.data_dir / "runs" / f"{published}.json").read_text())["run_id"]
            )

            ballast.unlink()
            ballast = fill(small_disk, leave_mb=0)
            full = run(ws, hook, "0")  # the check off, no byte left: every write of the night fails
            out = full.stdout + full.stderr
            assert full.returncode == 1, out
            assert "No space left on device" in out and "Alert sent: run failed" in out, out
            assert "Traceback" not in out, out
            assert len(hook.posts) == 2
            records_whole(ws)
            assert (ws.data_dir / "run.lock").read_text() == ""

            ballast.unlink()
            again = run(ws, hook, "10")
            assert again.returncode == 0, again.stdout + again.stderr
            assert ws.last_run()["published"] is not None
            assert len(records_whole(ws)) >= 2
    finally:
        if ws.sources_file.exists():
            delete_demo_stream(ws.sources_file)


def test_the_lock_is_taken_on_a_full_disk(small_disk: Path) -> None:
    """The lock file cannot take its holder's line: the lock is held all the same."""
    from dusk.lock import Locked, run_lock

    data = small_disk / "data"
    data.mkdir()
    fill(small_disk, leave_mb=0)
    with run_lock(data), pytest.raises(Locked), run_lock(data):
        pass
