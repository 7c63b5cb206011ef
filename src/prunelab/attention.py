"""Multi-head attention whose head width is its own: what ``nn.MultiheadAttention``
becomes once some of its heads are removed.

``nn.MultiheadAttention`` ties the heads' total width to ``embed_dim`` (the model's
width), so it cannot hold fewer heads of the same size. ``HeadAttention`` keeps
separate query, key, value and output projections, is called exactly like
``nn.MultiheadAttention`` and returns the same ``(output, weights)`` pair, so it
replaces one inside ``nn.TransformerEncoderLayer`` or any other module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HeadAttention(nn.Module):
    """``num_heads`` heads of width ``head_dim`` reading ``embed_dim``-wide queries
    (``kdim``/``vdim``-wide keys and values) and writing ``embed_dim``-wide outputs."""

    # what nn.TransformerEncoderLayer reads before choosing its fused path, which only
    # nn.MultiheadAttention's packed weights can take
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(
        self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True,
        out_bias: bool = True, dropout: float = 0.0, batch_first: bool = False,
        kdim: int | None = None, vdim: int | None = None,
        heads_of: tuple[int, tuple[int, ...]] | None = None,
    ) -> None:  # fmt: skip
        """``heads_of``: the head count of the attention these heads were kept from and
        their places in it, which a per-head ``attn_mask`` of that attention is read by."""
        super().__init__()
        width = num_heads * head_dim
        self.heads_of = heads_of or (num_heads, tuple(range(num_heads)))
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, width, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, width, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, width, bias=bias)
        self.out_proj = nn.Linear(width, embed_dim, bias=out_bias)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
        attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), \
            self._heads(self.v_proj(value))  # fmt: skip
        mask = self._mask(attn_mask, key_padding_mask, q)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / self.head_dim**0.5
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                scores = scores + _causal(q.shape[-2], k.shape[-2], q)
            weights = torch.softmax(scores, dim=-1)
            out = F.dropout(weights, dropout, self.training) @ v
        else:
            causal = is_causal and mask is None
            out = F.scaled_dot_product_attention(q, k, v, mask, dropout, is_causal=causal)
            weights = None
        batch, length = out.shape[0], out.shape[2]
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        if weights is not None:
            weights = weights.mean(1) if average_attn_weights else weights
            weights = weights.squeeze(0) if unbatched else weights
        return out, weights

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _mask(
        self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
        q: torch.Tensor,
    ) -> torch.Tensor | None:  # fmt: skip
        """One additive float mask of shape [batch or 1, heads or 1, L, S] from
        ``nn.MultiheadAttention``'s two (boolean True: not attended)."""
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, q.dtype)
            if mask.dim() == 3:  # one per batch entry and head, of the original heads
                original, kept = self.heads_of
                if mask.shape[0] != q.shape[0] * original:
                    raise ValueError(
                        f"a 3-D attn_mask has batch * {original} heads entries first; got "
                        f"{mask.shape[0]} for a batch of {q.shape[0]}"
                    )
                mask = mask.reshape(q.shape[0], original, *mask.shape[-2:])[:, list(kept)]
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, q.dtype)[:, None, None, :]
            mask = padding if mask is None else mask + padding
        return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def _causal(length: int, source: int, like: torch.Tensor) -> torch.Tensor:
    above = torch.ones(length, source, dtype=torch.bool, device=like.device).triu(1)
    return _additive(above, like.dtype)
