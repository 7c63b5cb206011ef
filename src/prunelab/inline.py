"""Fewer Python calls per forward pass: a traced graph of a network that calls its
layers' functions directly instead of their modules.

Calling a module costs a few microseconds of Python (hooks, ``__getattr__``); at batch 1
a pruned layer's product can cost as little, so module calls can take half the time of a
sparse forward pass (``benchmarks/inference.py``). The graph is for inference: the
tensors it reads are plain attributes, not parameters.
"""

from __future__ import annotations

import inspect
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

# A rule turns a module into the function it computes and the arguments after the
# input; a function of None means the identity.
Rule = Callable[[nn.Module], tuple[Callable | None, tuple[Any, ...]]]

RULES: dict[type[nn.Module], Rule] = {
    nn.Linear: lambda m: (F.linear, (m.weight, m.bias)),
    nn.ReLU: lambda m: (torch.relu_ if m.inplace else torch.relu, ()),
    nn.Flatten: lambda m: (torch.flatten, (m.start_dim, m.end_dim)),
    nn.Identity: lambda m: (None, ()),
    nn.Dropout: lambda m: (None, ()),  # the identity in inference
}


class _Tracer(fx.Tracer):
    """fx's tracer, which also stops at the modules that have rules. ``torch.load``
    re-traces a saved graph with it, with no arguments."""

    def __init__(self, leaves: tuple[type[nn.Module], ...] = ()):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualified_name)


def inline_calls(
    model: nn.Module, rules: dict[type[nn.Module], Rule] | None = None,
    example: torch.Tensor | None = None,
) -> nn.Module:  # fmt: skip
    """A graph module that computes what ``model`` computes in inference, with the
    modules that ``RULES`` and ``rules`` know replaced by direct function calls.

    ``model`` is put in eval mode; the graph shares its other modules and its tensors.
    It is returned as it is where tracing could change what it computes: a forward of
    more than one input (optional ones would be fixed at their defaults), Python
    control flow on tensor values (``torch.fx`` cannot trace it), or, given an
    ``example`` input, outputs that differ from the model's. An example the model
    itself cannot run is a ValueError. Modules with hooks stay modules, so that their
    hooks run.
    """
    model.eval()
    expected = _outputs(model, example) if example is not None else None
    if not _one_input(model):
        return model
    rules = {**RULES, **(rules or {})}
    tracer = _Tracer(tuple(rules))
    try:
        graph = tracer.trace(model)
    except Exception:  # tracing runs the model's own Python, which may fail in any way
        return model
    traced = fx.GraphModule(tracer.root, graph)
    names = (f"_inlined_{i}" for i in itertools.count() if not hasattr(traced, f"_inlined_{i}"))
    for node in list(graph.nodes):
        module = traced.get_submodule(node.target) if node.op == "call_module" else None
        rule = rules.get(type(module))
        if rule is None or len(node.args) != 1 or node.kwargs or has_hooks(module):
            continue
        function, extra = rule(module)
        if function is None:
            node.replace_all_uses_with(node.args[0])
        else:
            with graph.inserting_before(node):
                args = [_constant(traced, graph, next(names), a) for a in extra]
                call = graph.call_function(function, (*node.args, *args))
            # Code fx must not trace into when torch.load re-traces the saved graph.
            call.meta["is_wrapped"] = not (function.__module__ or "").startswith("torch")
            node.replace_all_uses_with(call)
        graph.erase_node(node)
    traced.delete_all_unused_submodules()
    traced.recompile()
    traced.eval()
    if example is not None and not _same_outputs(traced, example, expected):
        return model
    return traced


def _one_input(model: nn.Module) -> bool:
    parameters = inspect.signature(model.forward).parameters.values()
    return [p.kind for p in parameters] == [inspect.Parameter.POSITIONAL_OR_KEYWORD]


def has_hooks(module: nn.Module) -> bool:
    """Whether forward hooks are registered on ``module`` (they run only if it is called)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _outputs(model: nn.Module, example: torch.Tensor) -> Any:
    """``model``'s outputs on ``example``, which it must run: else the graph's outputs
    would be compared with nothing, and the model returned untraced without a word."""
    with torch.inference_mode():
        try:  # nn.Module's call: a graph module's own prints the traceback of its errors
            return nn.Module.__call__(model, example)
        except Exception as err:
            error = " ".join(f"{type(err).__name__}: {err}".split())  # one line
            raise ValueError(
                f"example: does not run through the model ({error}); give an input it takes"
            ) from err


def _same_outputs(traced: fx.GraphModule, example: torch.Tensor, expected: Any) -> bool:
    with torch.inference_mode():
        try:  # nn.Module's call, as in _outputs: no traceback printed
            torch.testing.assert_close(nn.Module.__call__(traced, example), expected)
        except Exception:  # a failed comparison, or a graph that cannot run the example
            return False
    return True


def _constant(traced: fx.GraphModule, graph: fx.Graph, name: str, value: Any) -> Any:
    """``value`` as a graph argument: a tensor becomes a plain attribute of ``traced``
    (read without ``nn.Module.__getattr__``); anything else is written into the code."""
    if not isinstance(value, torch.Tensor):
        return value
    setattr(traced, name, value.detach())
    with warnings.catch_warnings():  # fx would rather have a buffer, which reads slower
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        return graph.get_attr(name)
