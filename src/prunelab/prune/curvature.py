"""Curvature estimates for second-order pruning, computed without building any full Hessian.

* ``gauss_newton_diagonal``: the diagonal of the Gauss-Newton matrix of the task's
  mean loss, G = mean_n J_n^T H_n J_n, with J_n the Jacobian of the outputs with
  respect to the weights and H_n the exact Hessian of sample n's loss with respect
  to its outputs (softmax cross-entropy: diag(p_n) - p_n p_n^T). Writing
  H_n = L_n L_n^T (the task's ``curvature`` gives the columns of L_n), diag(G) =
  mean_n sum_c (J_n^T L_nc)^2: one backward pass per column, and per-sample
  gradients, which for a linear layer are outer products, so their squares sum as a
  matrix product.
* ``empirical_fisher_diagonal``: mean_n g_n^2 with g_n the per-sample gradient of
  the task's loss at the true target. Cheaper, and a worse estimate of the curvature.
* ``layer_input_hessian``: H = 2 X^T X / N of a layer's inputs, the Hessian of the
  layer's squared reconstruction error, for layer-wise OBS; ``input_norms``, the
  square roots of its diagonal times N / 2, for Wanda.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models import evaluating, first_tensor
from prunelab.tasks import Task, task_of

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)  # the layers whose inputs are read as patches

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class _Recorder:
    """Forward hooks that keep each layer's input (detached) and output (in the graph)."""

    def __init__(self, layers: dict[str, nn.Module]):
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [
            layer.register_forward_hook(self._hook(name)) for name, layer in layers.items()
        ]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output

        return hook

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def check_readable(layers: dict[str, nn.Module]) -> None:
    """Each layer reads its input as the rows of one matrix product (``_patches``), or a
    ValueError names the one that does not: the criteria that read inputs per weight
    cannot score a grouped convolution, or one that pads otherwise than with zeros."""
    for name, layer in layers.items():
        if not isinstance(layer, CONVOLUTIONS):
            continue
        padding = layer.padding if isinstance(layer.padding, str) else layer.padding_mode
        if layer.groups != 1 or padding != "zeros":
            raise ValueError(f"layer {name!r} ({layer.groups} groups, {padding} padding) reads "
                             "its inputs otherwise than one matrix product: the criteria that "
                             "read inputs per weight (obd, fisher, wanda, obs, obc) cannot "
                             f"score it; leave it out (--ignore {name}, or "
                             f"ignore=[{name!r}])")  # fmt: skip


def _patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows that its weight (flattened to 2-D) multiplies.

    Linear: [N, ..., in] -> [N, L, in], one row per token or position (L = 1 for [N, in]).
    Conv2d: [N, C, H, W] -> [N, L, C*kh*kw], one row per output position, in the order of
    ``weight.flatten(1)``; Conv1d as a Conv2d of height 1.
    """
    if isinstance(layer, CONVOLUTIONS):
        if isinstance(layer, nn.Conv1d):  # as a Conv2d of height 1
            x, padding = x.unsqueeze(2), (0, *layer.padding)
            kernel, dilation, stride = ((1, *v) for v in (layer.kernel_size, layer.dilation,
                                                          layer.stride))  # fmt: skip
        else:
            kernel, dilation, padding, stride = (layer.kernel_size, layer.dilation,
                                                 layer.padding, layer.stride)  # fmt: skip
        cols = F.unfold(x, kernel, dilation, padding, stride)
        return cols.transpose(1, 2)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _accumulate_squared_sample_grads(
    layer: nn.Module, x: torch.Tensor, delta: torch.Tensor, weight_acc: torch.Tensor,
    bias_acc: torch.Tensor | None,
) -> None:  # fmt: skip
    """Add sum_n (per-sample gradient)^2 of the weight (and bias) to the accumulators.

    ``delta`` is the gradient with respect to the layer's output for each sample.
    """
    patches = _patches(layer, x)  # [N, L, fan_in]
    if isinstance(layer, CONVOLUTIONS):
        d = delta.reshape(delta.shape[0], delta.shape[1], -1).transpose(1, 2)  # [N, L, out]
    else:  # a linear layer's outputs, per sample and token: [N, L, out]
        d = delta.reshape(delta.shape[0], -1, delta.shape[-1])
    if patches.shape[1] == 1:  # linear: per-sample grad is an outer product
        weight_acc += (d[:, 0] ** 2).T @ (patches[:, 0] ** 2)
    else:
        per_sample = d.transpose(1, 2) @ patches  # [N, out, fan_in]
        weight_acc += (per_sample**2).sum(0)
    if bias_acc is not None:
        bias_acc += (d.sum(1) ** 2).sum(0)


def _empty(layers: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {
            "weight": torch.zeros_like(layer.weight).flatten(1),
            **({"bias": torch.zeros_like(layer.bias)} if layer.bias is not None else {}),
        }
        for name, layer in layers.items()
    }


def _mean_squared_sample_grads(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Batches,
    output_grads: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]],
) -> dict[str, dict[str, torch.Tensor]]:
    """mean_n sum_v (per-sample gradient of v . logits_n)^2 for each parameter of ``layers``,
    with the vectors v of each batch given by ``output_grads(logits, labels)``."""
    check_readable(layers)
    acc, n = _empty(layers), 0
    names = list(layers)
    with evaluating(model):
        with _Recorder(layers) as rec, torch.enable_grad():
            for x, y in batches:
                logits = first_tensor(model(x))
                outputs = [rec.outputs[name] for name in names]
                for v in output_grads(logits.detach(), y):
                    deltas = torch.autograd.grad(logits, outputs, v, retain_graph=True)
                    for name, delta in zip(names, deltas, strict=True):
                        parts = acc[name]
                        _accumulate_squared_sample_grads(
                            layers[name], rec.inputs[name], delta, parts["weight"],
                            parts.get("bias"),
                        )  # fmt: skip
                n += x.shape[0]
    if n == 0:
        raise ValueError("no calibration data: curvature needs at least one batch")
    return {
        name: {key: (t / n).view_as(getattr(layers[name], key)) for key, t in parts.items()}
        for name, parts in acc.items()
    }


def _output_grads(task: str | Task, kind: str) -> Callable:
    task = task_of(task)
    given = task.curvature if kind == "gauss-newton" else task.sample_gradients
    if given is None:
        raise ValueError(f"the task {task.name!r} gives no {kind} factors of its loss, "
                         "which this criterion needs")  # fmt: skip
    return given


def gauss_newton_diagonal(
    model: nn.Module, layers: dict[str, nn.Module], batches: Batches,
    task: str | Task = "classification",
) -> dict[str, dict[str, torch.Tensor]]:  # fmt: skip
    """Diagonal of the Gauss-Newton matrix of the task's mean loss, per layer.

    Returns ``{layer: {"weight": h_w, "bias": h_b}}`` shaped like the parameters.
    """
    return _mean_squared_sample_grads(model, layers, batches, _output_grads(task, "gauss-newton"))


def empirical_fisher_diagonal(
    model: nn.Module, layers: dict[str, nn.Module], batches: Batches,
    task: str | Task = "classification",
) -> dict[str, dict[str, torch.Tensor]]:  # fmt: skip
    """Mean squared per-sample gradient of the task's loss at the true targets."""
    return _mean_squared_sample_grads(model, layers, batches, _output_grads(task, "fisher"))


def parameter_diagonal(
    model: nn.Module, batches: Batches, kind: str, task: str | Task = "classification"
) -> dict[str, torch.Tensor]:
    """The diagonal of ``kind`` ("gauss-newton" or "fisher") for every parameter of any
    model, normalization and attention included, by name.

    The same means of squared per-sample gradients as above, from ``torch.func``
    (one vectorised backward pass per sample and factor) rather than from hooks on
    Linear and Conv2d layers, which cannot see a parameter used anywhere else.
    """
    output_grads = _output_grads(task, kind)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def projected(params, x, v):
        output = torch.func.functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return (first_tensor(output).squeeze(0) * v).sum()

    per_sample = _per_sample(torch.func.grad(projected))
    acc, n = {name: torch.zeros_like(p) for name, p in params.items()}, 0
    with evaluating(model), warnings.catch_warnings():
        # attention has no vmap rule yet: torch says so, slower but exact
        warnings.filterwarnings("ignore", message="There is a performance drop")
        for x, y in batches:
            with torch.no_grad():
                logits = first_tensor(model(x))
            for v in output_grads(logits, y):
                for name, g in per_sample(params, x, v).items():
                    acc[name] += (g**2).sum(0)
            n += x.shape[0]
    if n == 0:
        raise ValueError("no calibration data: curvature needs at least one batch")
    return {name: a / n for name, a in acc.items()}


def _per_sample(grad: Callable) -> Callable:
    """``grad`` of each sample of a batch: vectorised, or one sample at a time for a model
    whose Python code looks at its inputs' values (Hugging Face's padding checks), which
    ``vmap`` cannot batch."""
    vectorised = torch.func.vmap(grad, in_dims=(None, 0, 0))
    batchable = [True]  # until vmap says otherwise, once

    def per_sample(params, x, v):
        if batchable[0]:
            try:
                return vectorised(params, x, v)
            except RuntimeError as err:
                if "vmap" not in str(err):
                    raise
                batchable[0] = False
        grads = [grad(params, xi, vi) for xi, vi in zip(x, v, strict=True)]
        return {name: torch.stack([g[name] for g in grads]) for name in params}

    return per_sample


@torch.no_grad()
def input_norms(
    model: nn.Module, layers: dict[str, nn.Module], batches: Batches
) -> dict[str, torch.Tensor]:
    """Per layer, the L2 norm of each input its flattened weight multiplies, over every
    calibration sample and position: ``[fan_in]`` (Wanda's ||X_j||), in one pass."""
    check_readable(layers)
    sums = {
        name: torch.zeros(layer.weight[0].numel(), dtype=torch.float64, device=layer.weight.device)
        for name, layer in layers.items()
    }
    with evaluating(model), _Recorder(layers) as rec:
        for x, _ in batches:
            model(x)
            for name, layer in layers.items():
                sums[name] += (_patches(layer, rec.inputs[name]).double() ** 2).sum((0, 1))
    return {name: total.sqrt().float() for name, total in sums.items()}


@torch.no_grad()
def layer_inputs(model: nn.Module, layer: nn.Module, batches: Batches) -> torch.Tensor:
    """The rows a layer's weight multiplies, over all calibration batches: [M, fan_in]."""
    check_readable({n: m for n, m in model.named_modules() if m is layer})
    rows = []
    with evaluating(model):
        with _Recorder({"layer": layer}) as rec:
            for x, _ in batches:
                model(x)
                rows.append(_patches(layer, rec.inputs["layer"]).flatten(0, 1))
    if not rows:
        raise ValueError("no calibration data: OBS needs at least one batch")
    return torch.cat(rows)


def layer_input_hessian(
    model: nn.Module, layer: nn.Module, batches: Batches, damping: float = 0.01
) -> torch.Tensor:
    """H = 2 X^T X / N in float64, plus ``damping`` times its mean diagonal."""
    x = layer_inputs(model, layer, batches).double()
    h = 2 * x.T @ x / x.shape[0]
    h.diagonal().add_(damping * h.diagonal().mean().clamp_min(1e-12))
    return h
