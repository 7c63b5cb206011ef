"""Reference networks, and which of a model's layers pruning may touch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """The seed's ReLU MLP by default: 784-1000-1000-500-200-10, no dropout."""

    name: str = "mlp"
    hidden: tuple[int, ...] = (1000, 1000, 500, 200)
    dropout: tuple[float, ...] = field(default=())  # one rate per hidden layer, or none

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; choose from {', '.join(MODELS)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")
        if self.dropout and len(self.dropout) != len(self.hidden):
            raise ValueError(
                f"give one dropout rate per hidden layer ({len(self.hidden)}), got {self.dropout}"
            )


def mlp(
    hidden: tuple[int, ...],
    dropout: tuple[float, ...] = (),
    in_features: int = 28 * 28,
    num_classes: int = 10,
) -> nn.Sequential:
    """A ReLU MLP that flattens the image first (the seed applied its layers per pixel row)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for i, size in enumerate(hidden):
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout and dropout[i] > 0:
            layers.append(nn.Dropout(dropout[i]))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


MODELS = {"mlp": mlp}


def build_model(config: ModelConfig, num_classes: int = 10, seed: int | None = None) -> nn.Module:
    """Build the model; with ``seed``, its initial weights follow from the seed alone."""
    if seed is None:
        return MODELS[config.name](config.hidden, config.dropout, num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[config.name](config.hidden, config.dropout, num_classes=num_classes)


class NothingToPruneError(ValueError):
    """The model has no layer that pruning could touch."""


def prunable_layers(model: nn.Module, include_last: bool = False) -> dict[str, nn.Module]:
    """The model's ``nn.Linear`` and ``nn.Conv2d`` layers by name, in definition order.

    The last such layer produces the logits and is left out unless ``include_last``:
    removing a class's output would remove the class.
    """
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    }
    if not include_last and layers:
        layers.pop(next(reversed(layers)))
    if not layers:
        raise NothingToPruneError(
            f"{type(model).__name__} has no prunable nn.Linear or nn.Conv2d layer"
            + ("" if include_last else " besides its output layer")
        )
    return layers
