"""ONNX: a compacted model as a file that onnxruntime runs, and runs it back.

Needs the ``onnx`` extra (``pip install 'prunelab[onnx]'``); imported only when used.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from prunelab.storage import ExportError


class OnnxModel(nn.Module):
    """An ONNX file run by onnxruntime, callable like the module it came from."""

    def __init__(self, path: str | Path):
        super().__init__()
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path))
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (y,) = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})
        return torch.from_numpy(y)


def save_onnx(model: nn.Module, path: str | Path, example: torch.Tensor) -> int:
    """Export ``model`` to ONNX with a dynamic batch size; return the file's bytes.

    Needs the ``onnx`` extra (``pip install 'prunelab[onnx]'``).
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError("ONNX export needs the onnx extra: pip install 'prunelab[onnx]'") from err
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    batch = torch.export.Dim("batch")
    example = example[:1].expand(2, *example.shape[1:]).contiguous().cpu()
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # it logs every torchvision operator it skips
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.cpu().eval(), (example,), str(tmp), dynamo=True,
                dynamic_shapes=({0: batch},), external_data=False,
            )  # fmt: skip
    finally:
        onnx_log.setLevel(level)
    tmp.replace(path)
    return path.stat().st_size
