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
    """An ONNX file run by onnxruntime, callable like the module it came from.

    onnxruntime's threads keep spinning after a run, which is fastest for back-to-back
    runs but takes the cores from other work in the process (torch's, say);
    ``spinning=False`` lets them sleep.
    """

    def __init__(self, path: str | Path, spinning: bool = True):
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options)
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
