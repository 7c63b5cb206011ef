"""Atomic writes: a file is either absent or complete, never half-written; and the
error of a file that is not a valid prunelab export."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save
from torch import nn


class ExportError(ValueError):
    """A file is not a valid prunelab export."""


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def state_dict_bytes(model: nn.Module) -> bytes:
    """``model``'s state dict serialised as safetensors."""
    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def save_state_dict(model: nn.Module, path: str | Path) -> None:
    """Save ``model``'s state dict as safetensors, atomically."""
    atomic_write_bytes(path, state_dict_bytes(model))


def load_state_dict(model: nn.Module, path: str | Path) -> nn.Module:
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model
