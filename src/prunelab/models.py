"""Reference networks, and which of a model's layers pruning may touch."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from prunelab import factories
from prunelab.architectures import mobilenetv2, resnet20, vit
from prunelab.options import check_choice, listing, shown


@dataclass(frozen=True)
class ModelConfig:
    """A built-in model. The default is the seed's ReLU MLP, 784-1000-1000-500-200-10."""

    name: str = field(
        default="mlp",
        metadata={
            "help": lambda: (
                listing(MODELS) + "; or your own, package.module:function or "
                "file.py:function, returning an nn.Module"
            ),
            "flag": "model",
            "choices": lambda: factories.Choices(MODELS),
            "what": "model",
        },
    )
    hidden: tuple[int, ...] | None = field(  # None: the model's default sizes
        default=None, metadata={"help": lambda: "hidden sizes (default: " + "; ".join(
            f"{name} {shown(kind.sizes)}" for name, kind in MODELS.items()) + ")"},
    )  # fmt: skip
    dropout: tuple[float, ...] = field(
        default=(), metadata={"help": "dropout rate after each hidden layer (mlp)"}
    )
    kwargs: dict[str, Any] = field(
        default_factory=dict,
        hash=False,  # (a dict; the configs stay hashable)
        metadata={"help": "keyword arguments of your --model function, as JSON, e.g. "
                  "'{\"width\": 64}'", "flag": "model-kwargs"},
    )  # fmt: skip
    # what the dataset gives it (None: 1x28x28 images of 10 classes), set by the study
    input_shape: tuple[int, ...] | None = None  # channels, height, width of one image
    classes: int | None = None
    source: str | None = None  # the fingerprint of your --model function's file

    def __post_init__(self) -> None:
        if factories.is_factory(self.name):
            if self.hidden is not None or self.dropout:
                raise ValueError("your own --model takes --model-kwargs, not --hidden or "
                                 "--dropout")  # fmt: skip
            # a file is named by its absolute path, so that it is found from anywhere
            object.__setattr__(self, "name", factories.absolute(self.name))
            if self.source is None:
                object.__setattr__(self, "source", factories.fingerprint(self.name))
            return
        if self.kwargs:
            raise ValueError(f"{self.name} takes --hidden, not --model-kwargs")
        check_choice("model", self.name, MODELS)
        sizes = self.sizes
        if not sizes or any(h < 1 for h in sizes):
            raise ValueError(f"hidden sizes must be positive, got {sizes}")
        kind = MODELS[self.name]
        if kind.depth is not None and len(sizes) != kind.depth:
            raise ValueError(
                f"{self.name} takes {kind.depth} hidden sizes ({kind.describe}), got {sizes}"
            )
        if self.dropout and not kind.dropout:
            raise ValueError(f"{self.name} takes no dropout")
        if self.dropout and len(self.dropout) != len(sizes):
            raise ValueError(
                f"give one dropout rate per hidden layer ({len(sizes)}), got {self.dropout}"
            )

    def for_data(self, shape: tuple[int, ...], classes: int | None) -> ModelConfig:
        """This model for inputs of ``shape`` and ``classes`` outputs (None where they are
        MNIST's, so that the ids of MNIST runs do not change; 0 where the data does not
        say, as a language model's)."""
        shape = tuple(shape)
        return replace(self, input_shape=None if shape == MNIST_SHAPE else shape,
                       classes=None if classes == 10 else classes or 0)  # fmt: skip

    @property
    def sizes(self) -> tuple[int, ...]:
        if factories.is_factory(self.name):
            return ()
        return self.hidden if self.hidden is not None else MODELS[self.name].sizes


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in evaluation mode for the block, its mode restored after it, even when
    the block raises (dropout and batch statistics off while measuring or scoring)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def first_tensor(output: Any) -> torch.Tensor:
    """The logits of an output that is a tuple, list or dict (Hugging Face models return
    them first), or the output itself."""
    while not isinstance(output, torch.Tensor):
        output = output[0] if isinstance(output, (tuple, list)) else next(iter(output.values()))
    return output


@contextmanager
def unfused_attention() -> Iterator[None]:
    """Attention by its plain modules, not ``nn.TransformerEncoderLayer``'s fused inference
    kernel, which FLOP counters cannot see into and whose rounding differs."""
    fused = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fused)


def call_with(model: nn.Module, inputs: Any) -> Any:
    """``model`` called with example inputs: a tensor, a tuple of positional arguments or
    a dict of keyword arguments (as Torch-Pruning traces them)."""
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor of an output that is a tensor, or a tuple, list or dict of them
    (a Hugging Face ``ModelOutput`` is a dict); anything else (a key-value cache) is
    not an output to compare or trace."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if not isinstance(output, (tuple, list)):
        return []
    return [t for value in output for t in output_tensors(value)]


MNIST_SHAPE = (1, 28, 28)  # channels, height, width of one input image


def mlp(
    hidden: tuple[int, ...],
    dropout: tuple[float, ...] = (),
    num_classes: int = 10,
    shape: tuple[int, ...] = MNIST_SHAPE,
) -> nn.Sequential:
    """A ReLU MLP that flattens the image first (the seed applied its layers per pixel row)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(shape)
    for i, size in enumerate(hidden):
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout and dropout[i] > 0:
            layers.append(nn.Dropout(dropout[i]))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def lenet5(
    hidden: tuple[int, ...] = (6, 16, 120, 84), dropout: tuple[float, ...] = (),
    num_classes: int = 10, shape: tuple[int, ...] = MNIST_SHAPE,
) -> nn.Sequential:  # fmt: skip
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling; 28x28 images (32x32 ones
    leave 6x6 maps for the first fully connected layer, not 5x5)."""
    conv1, conv2, fc1, fc2 = hidden
    channels, height, width = shape
    side = lambda n: ((n // 2) - 4) // 2  # noqa: E731 (after conv-pool, conv, pool)
    if min(side(height), side(width)) < 1:
        raise ValueError(f"lenet5 needs images of at least 12x12 pixels, got {height}x{width}")
    return nn.Sequential(
        nn.Conv2d(channels, conv1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(conv1, conv2, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(conv2 * side(height) * side(width), fc1), nn.ReLU(),
        nn.Linear(fc1, fc2), nn.ReLU(),
        nn.Linear(fc2, num_classes),
    )  # fmt: skip


def lenet5_caffe(
    hidden: tuple[int, ...] = (20, 50, 500), dropout: tuple[float, ...] = (),
    num_classes: int = 10, shape: tuple[int, ...] = MNIST_SHAPE,
) -> nn.Sequential:  # fmt: skip
    """Caffe's LeNet (its MNIST example, the LeNet-5 of Han et al. 2015 and Deep
    Compression): 5x5 convolutions without padding, each max-pooled, a ReLU fully
    connected layer; 431,080 parameters on 28x28 images, 1,724,320 bytes in float32."""
    conv1, conv2, fc1 = hidden
    channels, height, width = shape
    side = lambda n: ((n - 4) // 2 - 4) // 2  # noqa: E731 (conv, pool, conv, pool)
    if min(side(height), side(width)) < 1:
        raise ValueError(f"lenet5-caffe needs images of at least 16x16 pixels, got "
                         f"{height}x{width}")  # fmt: skip
    return nn.Sequential(
        nn.Conv2d(channels, conv1, 5), nn.MaxPool2d(2),
        nn.Conv2d(conv1, conv2, 5), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(conv2 * side(height) * side(width), fc1), nn.ReLU(),
        nn.Linear(fc1, num_classes),
    )  # fmt: skip


@dataclass(frozen=True)
class ModelKind:
    """A registered model: one entry of ``MODELS``, all that names it elsewhere.

    ``build(hidden, dropout, num_classes=..., shape=...)`` makes it for images of
    ``shape`` (channels, height, width); ``sizes`` are its default hidden sizes;
    ``depth``, how many sizes it takes (None: any); ``dropout``, whether it takes
    dropout rates; ``describe``, its line in ``--help``.
    """

    build: Callable[..., nn.Module]
    sizes: tuple[int, ...]
    describe: str
    depth: int | None = None
    dropout: bool = True


MODELS: dict[str, ModelKind] = {
    "mlp": ModelKind(mlp, (1000, 1000, 500, 200), "the seed's ReLU MLP"),
    "lenet5": ModelKind(lenet5, (6, 16, 120, 84), "a small CNN (LeNet-5: conv1, conv2, fc1, "
                        "fc2)", depth=4, dropout=False),
    "lenet5-caffe": ModelKind(lenet5_caffe, (20, 50, 500), "Caffe's LeNet, as Han et al. "
                              "prune it (conv1, conv2, fc1)", depth=3, dropout=False),
    "resnet20": ModelKind(resnet20, (16, 32, 64), "ResNet-20 (BatchNorm, residual "
                          "shortcuts; stage widths)", depth=3, dropout=False),
    "mobilenetv2": ModelKind(mobilenetv2, (16, 24, 32, 64), "a small MobileNetV2 (inverted "
                             "residuals, depthwise convolutions; stage widths)", dropout=False),
    "vit": ModelKind(vit, (64, 128), "a small Vision Transformer (7x7 patches, 4 pre-norm "
                     "blocks of 4 heads; width, MLP width)", depth=2, dropout=False),
}  # fmt: skip


def build_model(
    config: ModelConfig, num_classes: int | None = None, seed: int | None = None
) -> nn.Module:
    """Build the model (for ``num_classes``, else the config's classes, else 10); with
    ``seed``, its initial weights follow from the seed alone."""
    classes = num_classes or config.classes
    shape = config.input_shape or MNIST_SHAPE
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if factories.is_factory(config.name):
            known = None if classes == 0 else classes or 10
            return factories.build(config.name, config.source, config.kwargs, known, shape)
        try:
            return MODELS[config.name].build(config.sizes, config.dropout,
                                             num_classes=classes or 10, shape=shape)  # fmt: skip
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"the {config.name} model cannot be built for inputs of shape "
                             f"{list(shape)}: {type(err).__name__}: {err}") from err  # fmt: skip


# Layers that map a zero channel or feature to zero, position by position.
PASS_THROUGH = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.Hardtanh,
    nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
)  # fmt: skip


def chain_problem(model: nn.Module) -> str | None:
    """Why ``model`` is not a plain chain, or None: an ``nn.Sequential`` of Linear,
    ungrouped zero-padded Conv2d, Flatten(1) and ``PASS_THROUGH`` layers, whose definition
    order is its order of computation and whose units need no trace to be removed."""
    if not isinstance(model, nn.Sequential):
        return f"not an nn.Sequential chain of layers but {type(model).__name__}"
    for module in model:
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            return "a grouped or not zero-padded Conv2d"
        if not isinstance(module, (nn.Linear, nn.Conv2d, nn.Flatten, *PASS_THROUGH)):
            return f"{type(module).__name__}, whose effect on removed units is not known"
        if isinstance(module, nn.Flatten) and module.start_dim != 1:
            return "a Flatten that does not start at dimension 1"
    if not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model):
        return "no Linear or Conv2d layer"
    return None


def is_chain(model: nn.Module) -> bool:
    return chain_problem(model) is None


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
