"""Masks are data: state-dict name -> bool tensor of the tensor's shape (True = kept).

They are applied in place after each optimizer step, so a pruned weight is
exactly zero whatever the optimizer's momentum; no hooks run in forward, and the
model's state-dict keys stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.utils.prune as torch_prune
from safetensors.torch import load_file, save
from torch import nn

from prunelab.storage import atomic_write_bytes


class Masks(Mapping[str, torch.Tensor]):
    def __init__(self, masks: Mapping[str, torch.Tensor]):
        for name, mask in masks.items():
            if mask.dtype != torch.bool:
                raise TypeError(f"mask {name!r} must be a bool tensor, got {mask.dtype}")
        self._masks = dict(masks)

    @classmethod
    def from_keep(
        cls, layers: Mapping[str, nn.Module], keep: Mapping[str, torch.Tensor], structure: str
    ) -> Masks:
        """Masks for a layer's weight (and, for units, bias) from a keep-set.

        For "weight" the keep-set has the weight's shape; for "unit" it is one flag
        per output unit, and a removed unit loses its whole row and its bias.
        """
        masks = {}
        for name, layer in layers.items():
            kept = keep[name]
            if structure == "unit":
                shape = (-1,) + (1,) * (layer.weight.dim() - 1)
                masks[f"{name}.weight"] = kept.view(shape).expand_as(layer.weight).clone()
                if layer.bias is not None:
                    masks[f"{name}.bias"] = kept.clone()
            else:
                masks[f"{name}.weight"] = kept.clone()
        return cls(masks)

    def __and__(self, earlier: Masks) -> Masks:
        """These masks with ``earlier`` ones held too: an entry stays only if both keep it."""
        both = {n: m & earlier[n] if n in earlier else m for n, m in self.items()}
        return Masks({**earlier, **both})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self):
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def _check(self, params: Mapping[str, torch.Tensor]) -> None:
        for name, mask in self._masks.items():
            if name not in params:
                raise KeyError(f"mask for {name!r}, which the model does not have")
            if params[name].shape != mask.shape:
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}, "
                    f"parameter has {tuple(params[name].shape)}"
                )

    def holder(self, model: nn.Module) -> Callable[[nn.Module], None]:
        """An ``after_step`` callback that zeroes the pruned entries of ``model``: call it
        after every optimizer step, as ``hold()`` or, as ``train`` does, ``hold(model)``.

        The parameter/mask pairs are resolved once. Multiplying by a 0/1 mask of the
        parameter's dtype is about five times faster on CPU than ``masked_fill_``
        with a bool mask (``benchmarks/cpu_tricks.py``), and a unit mask is multiplied
        as one flag per row; this runs after every step, so its cost is the cost of
        holding masks.
        """
        params = _tensors(model)
        self._check(params)
        pairs = [
            (params[name], _broadcastable(mask).to(params[name])) for name, mask in self.items()
        ]

        @torch.no_grad()
        def hold(_model: nn.Module | None = None) -> None:
            for param, mask in pairs:
                param.mul_(mask)

        return hold

    def apply_(self, model: nn.Module) -> None:
        """Zero the pruned entries of ``model`` in place."""
        self.holder(model)(model)

    @classmethod
    def from_torch_prune(cls, model: nn.Module) -> Masks:
        """Read the masks of a model pruned with ``torch.nn.utils.prune`` and make the
        pruning permanent (``prune.remove``): the model is left plain, its parameters
        named as before pruning, and the masks are returned for prunelab to hold."""
        masks = {}
        for module_name, module in model.named_modules():
            for hook in list(module._forward_pre_hooks.values()):
                if isinstance(hook, torch_prune.BasePruningMethod):
                    param = hook._tensor_name
                    mask = getattr(module, f"{param}_mask").detach().bool().clone()
                    torch_prune.remove(module, param)
                    masks[f"{module_name}.{param}" if module_name else param] = mask
        return cls(masks)

    def to_torch_prune(self, model: nn.Module) -> nn.Module:
        """Install these masks as ``torch.nn.utils.prune`` masks (``custom_from_mask``),
        for training code that expects ``weight_orig`` / ``weight_mask``; returns ``model``."""
        self._check(dict(model.named_parameters()))
        for name, mask in self.items():
            module_name, _, param = name.rpartition(".")
            module = model.get_submodule(module_name)
            torch_prune.custom_from_mask(module, param, mask.to(getattr(module, param).device))
        return model

    def save(self, path: str | Path) -> None:
        tensors = {name: mask.to(torch.uint8).contiguous().cpu() for name, mask in self.items()}
        atomic_write_bytes(path, save(tensors))

    @classmethod
    def load(cls, path: str | Path) -> Masks:
        return cls({name: t.bool() for name, t in load_file(str(path)).items()})


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What masks can name: parameters, and the buffers of a structured group (a
    normalization's running statistics)."""
    return dict(model.named_buffers()) | dict(model.named_parameters())


def _broadcastable(mask: torch.Tensor) -> torch.Tensor:
    """A mask whose rows are each all-kept or all-pruned, as an [rows, 1, ...] tensor."""
    if mask.dim() < 2:
        return mask
    flat = mask.flatten(1)
    if bool((flat == flat[:, :1]).all()):
        return flat[:, :1].reshape(-1, *([1] * (mask.dim() - 1)))
    return mask
