"""Attention heads as groups: a head's query, key and value rows and the output
projection's columns that read it are one unit.

A trace sees only that the projections' channels meet in a matrix product; it cannot
tell that attention mixes a head's channels with each other and never with another
head's, so removing a channel and removing a head are not the same. Each kind of
attention module says where it keeps its heads (``ATTENTION``, one entry per kind);
masking a head zeroes its value rows, so what it adds to the output is exactly zero,
and its query and key rows, so that nothing of it is left to compact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.attention import HeadAttention
from prunelab.prune.transposed import hf_conv1d


@dataclass(frozen=True)
class Layout:
    """Where one attention module keeps ``heads`` heads of ``head_dim`` entries:
    ``runs`` are (tensor, dimension, offset) of each block of heads * head_dim indices
    that hold the heads one after another (query, key and value rows; output columns)."""

    heads: int
    head_dim: int
    runs: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class AttentionKind:
    """One kind of attention module: which modules are of it, where their heads are, and
    how to keep only some heads (``shrink`` returns the module to put in its place)."""

    matches: Callable[[nn.Module], bool]
    layout: Callable[[nn.Module], Layout]
    shrink: Callable[[nn.Module, torch.Tensor], nn.Module]


def sliced_linear(
    layer: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
):
    """A copy of a Linear layer with only the given output rows and input columns."""
    weight = layer.weight if rows is None else layer.weight[rows]
    weight = weight if cols is None else weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    new = new.to(weight.device, weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias if rows is None else layer.bias[rows])
    return new


def head_entries(keep: torch.Tensor, head_dim: int, offset: int = 0) -> torch.Tensor:
    """Indices of the kept heads' entries, in a block that starts at ``offset``."""
    return (offset + keep[:, None] * head_dim + torch.arange(head_dim)).flatten()


# -- torch's nn.MultiheadAttention: Q, K and V packed in one in_proj_weight ---------------


def _is_torch(m: nn.Module) -> bool:
    """``nn.MultiheadAttention``, unless a bias or zero row is added to its keys and values
    (``add_bias_kv``, ``add_zero_attn``): per-head entries outside its projections."""
    return isinstance(m, nn.MultiheadAttention) and m.bias_k is None and not m.add_zero_attn


def _torch_layout(m: nn.MultiheadAttention) -> Layout:
    e = m.embed_dim
    if m._qkv_same_embed_dim:
        runs = [("in_proj_weight", 0, o) for o in (0, e, 2 * e)]
    else:
        runs = [(f"{p}_proj_weight", 0, 0) for p in "qkv"]
    if m.in_proj_bias is not None:
        runs += [("in_proj_bias", 0, o) for o in (0, e, 2 * e)]
    return Layout(m.num_heads, m.head_dim, (*runs, ("out_proj.weight", 1, 0)))


@torch.no_grad()
def _torch_shrink(m: nn.MultiheadAttention, keep: torch.Tensor) -> nn.Module:
    e, rows = m.embed_dim, head_entries(keep, m.head_dim)
    weights = m.in_proj_weight.split(e) if m._qkv_same_embed_dim else \
        (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)  # fmt: skip
    biases = m.in_proj_bias.split(e) if m.in_proj_bias is not None else (None,) * 3
    new = HeadAttention(
        e, len(keep), m.head_dim, bias=m.in_proj_bias is not None,
        out_bias=m.out_proj.bias is not None, dropout=m.dropout, batch_first=m.batch_first,
        kdim=m.kdim, vdim=m.vdim, heads_of=(m.num_heads, tuple(keep.tolist())),
    ).to(m.out_proj.weight.device, m.out_proj.weight.dtype)  # fmt: skip
    for proj, weight, bias in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases,
                                  strict=True):  # fmt: skip
        proj.weight.copy_(weight[rows])
        if bias is not None:
            proj.bias.copy_(bias[rows])
    new.out_proj = sliced_linear(m.out_proj, cols=rows)
    return new


# -- prunelab's HeadAttention (a compacted nn.MultiheadAttention) -------------------------


def _heads_layout(m: HeadAttention) -> Layout:
    kinds = ("weight", "bias") if m.q_proj.bias is not None else ("weight",)
    runs = tuple((f"{p}_proj.{t}", 0, 0) for p in "qkv" for t in kinds)
    return Layout(m.num_heads, m.head_dim, (*runs, ("out_proj.weight", 1, 0)))


def _heads_shrink(m: HeadAttention, keep: torch.Tensor) -> nn.Module:
    rows = head_entries(keep, m.head_dim)
    m.q_proj, m.k_proj, m.v_proj = (sliced_linear(p, rows) for p in (m.q_proj, m.k_proj, m.v_proj))
    m.out_proj, m.num_heads = sliced_linear(m.out_proj, cols=rows), len(keep)
    original, kept = m.heads_of
    m.heads_of = (original, tuple(kept[i] for i in keep.tolist()))
    return m


# -- Hugging Face BERT-style (BertAttention: self.query/key/value, output.dense) ----------


def _is_bert(m: nn.Module) -> bool:
    inner, output = getattr(m, "self", None), getattr(m, "output", None)
    return (
        all(isinstance(getattr(inner, p, None), nn.Linear) for p in ("query", "key", "value"))
        and hasattr(inner, "attention_head_size")
        and isinstance(getattr(output, "dense", None), nn.Linear)
    )


def _bert_layout(m: nn.Module) -> Layout:
    s = m.self
    runs = tuple(
        (f"self.{p}.{t}", 0, 0) for p in ("query", "key", "value") for t in ("weight", "bias")
        if getattr(getattr(s, p), t) is not None
    )  # fmt: skip
    return Layout(s.num_attention_heads, s.attention_head_size,
                  (*runs, ("output.dense.weight", 1, 0)))  # fmt: skip


def _bert_shrink(m: nn.Module, keep: torch.Tensor) -> nn.Module:
    s = m.self
    rows = head_entries(keep, s.attention_head_size)
    s.query, s.key, s.value = (sliced_linear(p, rows) for p in (s.query, s.key, s.value))
    m.output.dense = sliced_linear(m.output.dense, cols=rows)
    s.num_attention_heads, s.all_head_size = len(keep), len(rows)
    return m


# -- Hugging Face GPT-2-style (c_attn packs Q, K, V in a Conv1D whose weight is [in, out]) --


def _is_gpt2(m: nn.Module) -> bool:
    conv1d = hf_conv1d()
    return (
        conv1d is not None
        and isinstance(getattr(m, "c_attn", None), conv1d)
        and isinstance(getattr(m, "c_proj", None), conv1d)
        and not getattr(m, "is_cross_attention", False)
        and hasattr(m, "split_size")
    )


def _gpt2_layout(m: nn.Module) -> Layout:
    e = m.split_size
    runs = [(t, d, o) for t, d in (("c_attn.weight", 1), ("c_attn.bias", 0)) for o in (0, e, 2 * e)]
    return Layout(m.num_heads, m.head_dim, (*runs, ("c_proj.weight", 0, 0)))


@torch.no_grad()
def _gpt2_shrink(m: nn.Module, keep: torch.Tensor) -> nn.Module:
    e = m.split_size
    cols = torch.cat([head_entries(keep, m.head_dim, o) for o in (0, e, 2 * e)])
    rows = head_entries(keep, m.head_dim)
    m.c_attn.weight = nn.Parameter(m.c_attn.weight[:, cols].clone())
    m.c_attn.bias = nn.Parameter(m.c_attn.bias[cols].clone())
    m.c_proj.weight = nn.Parameter(m.c_proj.weight[rows].clone())
    m.c_attn.nf, m.c_proj.nx = len(cols), len(rows)
    m.split_size, m.num_heads = len(rows), len(keep)
    return m


ATTENTION: dict[str, AttentionKind] = {
    "torch": AttentionKind(_is_torch, _torch_layout, _torch_shrink),
    "prunelab": AttentionKind(lambda m: isinstance(m, HeadAttention), _heads_layout, _heads_shrink),
    "bert": AttentionKind(_is_bert, _bert_layout, _bert_shrink),
    "gpt2": AttentionKind(_is_gpt2, _gpt2_layout, _gpt2_shrink),
}


def attention_modules(model: nn.Module) -> dict[str, AttentionKind]:
    """Every attention module of ``model`` that some kind knows, by name."""
    found = {}
    for name, module in model.named_modules():
        kind = next((k for k in ATTENTION.values() if k.matches(module)), None)
        if kind is not None and not any(name.startswith(f"{n}.") for n in found):
            found[name] = kind
    return found


def head_units(layout: Layout, length: int, offset: int) -> torch.Tensor:
    """The head of each index along a dimension of ``length`` whose heads start at
    ``offset`` (-1 outside them)."""
    units = torch.full((length,), -1, dtype=torch.long)
    width = layout.heads * layout.head_dim
    units[offset : offset + width] = torch.arange(layout.heads).repeat_interleave(layout.head_dim)
    return units


def shrink_heads(model: nn.Module, name: str, kind: AttentionKind, keep: torch.Tensor) -> None:
    """Keep only heads ``keep`` of attention module ``name``, in place in ``model``."""
    module = model.get_submodule(name)
    new = kind.shrink(module, keep.cpu()).train(module.training)
    if new is not module:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    for outer_name, outer in model.named_modules():
        if isinstance(outer, nn.TransformerEncoder) and name.startswith(f"{outer_name}."):
            outer.use_nested_tensor = False  # its nested-tensor path needs packed weights


__all__ = [
    "ATTENTION",
    "AttentionKind",
    "Layout",
    "attention_modules",
    "head_entries",
    "shrink_heads",
    "sliced_linear",
]
