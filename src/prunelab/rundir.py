"""Safety of a run directory: one writer at a time, and one configuration.

The lock is an advisory ``flock`` on ``RUN_DIR/.lock``: the kernel releases it
when its process ends, however it ends (SIGKILL included), so a crash never
leaves a directory locked; the file's text names the holder for the error.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from prunelab.config import to_json

# What a study may change and still share a run directory: its grid. Everything
# else (data, model, training, fine-tuning, schedule) must match.
GRID_FIELDS = ("methods", "ks", "seed", "seeds")


class RunDirError(ValueError):
    """A run directory cannot be used as asked."""


class RunLock:
    """``with RunLock(root):`` holds ``root`` for this process, or raises RunDirError."""

    def __init__(self, root: str | Path):
        self.path = Path(root) / ".lock"
        self.file = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")  # noqa: SIM115 (held until __exit__)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunDirError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish "
                "or choose another --out"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.file.write(f"process {os.getpid()} on {socket.gethostname()} (since {started})")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # closing releases the lock


def holder(root: str | Path) -> str | None:
    """Who holds ``root``'s lock now, or None."""
    path = Path(root) / ".lock"
    if not path.exists():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
    return None


def check_compatible(config_path: Path, config) -> None:
    """Refuse a run directory whose stored configuration differs outside the grid."""
    if not config_path.exists():
        return
    try:
        stored = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise RunDirError(
            f"{config_path} is unreadable ({err}); delete it or use another --out"
        ) from err
    wanted = json.loads(to_json(config))  # as stored: lists, not tuples
    defaults = json.loads(to_json(type(config)()))  # settings newer than the directory
    differ = sorted(
        key for key in set(stored) | set(wanted)
        if key not in GRID_FIELDS and stored.get(key, defaults.get(key)) != wanted.get(key)
    )  # fmt: skip
    if differ:
        raise RunDirError(
            f"{config_path.parent} holds a study with a different {', '.join(differ)}; "
            "results would mix. Use another --out, or delete that directory"
        )
