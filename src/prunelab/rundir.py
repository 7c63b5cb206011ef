"""Safety of a run directory: one writer at a time, and one configuration.

The lock is ``filelock``'s on ``RUN_DIR/.lock``: an OS lock (``flock`` on Unix,
``msvcrt.locking`` on Windows) that the system releases when its process ends,
however it ends (SIGKILL included), so a crash never leaves a directory locked.
``RUN_DIR/.holder`` names the holder for the error.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from prunelab.config import canonical, read_config
from prunelab.paths import RunPaths

# What a study may change and still share a run directory: its grid. Everything
# else (data, model, training, fine-tuning, schedule) must match.
GRID_FIELDS = ("methods", "ks", "seed", "seeds")


class RunDirError(ValueError):
    """A run directory cannot be used as asked."""


class RunLock:
    """``with RunLock(root):`` holds ``root`` for this process, or raises RunDirError."""

    def __init__(self, root: str | Path):
        self.paths = RunPaths(Path(root))
        self.lock = FileLock(self.paths.lock)

    def __enter__(self) -> RunLock:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise RunDirError(
                f"{self.paths.root} is in use by {_holder_text(self.paths)}; wait for it to finish "
                "or choose another `out`"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        text = f"process {os.getpid()} on {socket.gethostname()} (since {started})"
        self.paths.holder.write_text(text)
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def _holder_text(paths: RunPaths) -> str:
    try:
        return paths.holder.read_text().strip() or "another process"
    except OSError:
        return "another process"


def holder(root: str | Path) -> str | None:
    """Who holds ``root``'s lock now (as another process sees it), or None."""
    paths = RunPaths(Path(root))
    if not paths.lock.exists():
        return None
    lock = FileLock(paths.lock)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return _holder_text(paths)
    lock.release()
    return None


def check_compatible(config_path: Path, config) -> None:
    """Refuse a run directory whose stored configuration differs outside the grid.

    Settings the directory predates take their defaults, nested ones included, so
    adding a setting never makes an old directory incompatible.
    """
    if not config_path.exists():
        return
    try:
        stored = read_config(config_path, type(config))
    except (OSError, ValueError, TypeError) as err:
        raise RunDirError(
            f"{config_path} is unreadable ({err}); delete it or use another `out`"
        ) from err
    differ = [
        f.name for f in dataclasses.fields(config)
        if f.name not in GRID_FIELDS
        and canonical(getattr(stored, f.name)) != canonical(getattr(config, f.name))
    ]  # fmt: skip
    if differ:
        raise RunDirError(
            f"{config_path.parent} holds a study with a different {', '.join(differ)}; "
            "results would mix. Use another `out`, or delete that directory"
        )
