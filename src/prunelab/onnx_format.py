"""ONNX: a compacted model as a file that onnxruntime runs, and runs it back.

Needs the ``onnx`` extra (``pip install 'prunelab[onnx]'``); imported only when used.

At float16 the file stores its weights as float16, each read through a Cast to
float32: the graph computes in float32, as onnxruntime runs everywhere (its float16
kernels on CPU are few), and the file holds half the bytes, as the float16 sparse and
compact forms do.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
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


FLOAT16_MAX = 65504.0


def _float16_weights(path: Path) -> None:
    """Store the ONNX file's float32 initializers as float16, each read back through a
    Cast to float32 under its old name, so the graph and its arithmetic stay float32.
    Scalars (the exporter's constants, such as a Clip's bounds) and tensors that float16
    cannot hold (over its range, infinite or NaN) stay float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inputs = {value.name for value in graph.input}
    taken = {t.name for t in graph.initializer} | inputs | {
        name for node in graph.node for name in (*node.input, *node.output)
    }  # fmt: skip
    kept, casts = [], []
    for tensor in graph.initializer:
        values = numpy_helper.to_array(tensor) if tensor.data_type == TensorProto.FLOAT else None
        if (values is None or values.size < 2 or tensor.name in inputs
                or not (np.abs(values) <= FLOAT16_MAX).all()):  # fmt: skip
            kept.append(tensor)
            continue
        name = f"{tensor.name}_float16"
        while name in taken:
            name += "_"
        taken.add(name)
        kept.append(numpy_helper.from_array(values.astype(np.float16), name))
        casts.append(helper.make_node("Cast", [name], [tensor.name], to=TensorProto.FLOAT))
    nodes = [*casts, *graph.node]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    graph.ClearField("node")
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def save_onnx(
    model: nn.Module, path: str | Path, example: torch.Tensor, dtype: torch.dtype = torch.float32
) -> int:
    """Export ``model`` to ONNX with a dynamic batch size; return the file's bytes.

    ``dtype`` float16 stores the weights as float16; the model still takes, computes
    and returns float32. Needs the ``onnx`` extra (``pip install 'prunelab[onnx]'``).
    """
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"ONNX weights are stored as float32 or float16, not {dtype}")
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
    if dtype == torch.float16:
        _float16_weights(tmp)
    tmp.replace(path)
    return path.stat().st_size
