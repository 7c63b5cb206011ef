"""Fewer Python calls per forward pass: a traced graph of a network that calls its
layers' functions directly instead of their modules.

Calling a module costs a few microseconds of Python (hooks, ``__getattr__``); at batch 1
a pruned layer's product can cost as little, so module calls can take half the time of a
sparse forward pass (``benchmarks/inference.py``). The graph is for inference: the
tensors it reads are plain attributes, not parameters.
"""

from __future__ import annotations

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
    nn.Linear: lambda m: (F.linear, (m.weight.detach(), m.bias)),
    nn.ReLU: lambda m: (torch.relu, ()),
    nn.Flatten: lambda m: (torch.flatten, (m.start_dim, m.end_dim)),
    nn.Identity: lambda m: (None, ()),
    nn.Dropout: lambda m: (None, ()),  # the identity in inference
}


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[type[nn.Module], ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualified_name)


def inline_calls(model: nn.Module, rules: dict[type[nn.Module], Rule] | None = None) -> nn.Module:
    """A graph module that computes what ``model`` (in eval mode) computes, with the
    modules that ``RULES`` and ``rules`` know replaced by direct function calls; the model
    itself where ``torch.fx`` cannot trace it (Python control flow on tensor values)."""
    rules = {**RULES, **(rules or {})}
    tracer = _Tracer(tuple(rules))
    try:
        graph = tracer.trace(model)
    except Exception:  # tracing runs the model's own Python, which may fail in any way
        return model
    traced = fx.GraphModule(tracer.root, graph)
    names = (f"_inlined_{i}" for i in itertools.count())
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        rule = rules.get(type(traced.get_submodule(node.target)))
        if rule is None:
            continue
        function, extra = rule(traced.get_submodule(node.target))
        if function is None:
            node.replace_all_uses_with(node.args[0])
        else:
            with graph.inserting_before(node):
                args = [_constant(traced, graph, next(names), a) for a in extra]
                node.replace_all_uses_with(graph.call_function(function, (*node.args, *args)))
        graph.erase_node(node)
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced.eval()


def _constant(traced: fx.GraphModule, graph: fx.Graph, name: str, value: Any) -> Any:
    """``value`` as a graph argument: a tensor becomes a plain attribute of ``traced``
    (read without ``nn.Module.__getattr__``); anything else is written into the code."""
    if not isinstance(value, torch.Tensor):
        return value
    setattr(traced, name, value.detach())
    with warnings.catch_warnings():  # fx would rather have a buffer, which reads slower
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        return graph.get_attr(name)
