"""Transformers: attention heads and MLP units as groups, masked and compacted, on the
ViT defined here and on Hugging Face BERT and GPT-2 built from small configs."""

import copy
import importlib.util
import warnings

import pytest
import torch
from torch import nn

import prunelab
from prunelab.attention import HeadAttention
from prunelab.compact import parameter_count
from prunelab.metrics import flops
from prunelab.models import ModelConfig, build_model, first_tensor
from prunelab.prune.groups import Graph, dead


def hugging_face(kind: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=16, num_labels=3,
        )  # fmt: skip
        return transformers.BertForSequenceClassification(config)
    config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=16, num_labels=3, pad_token_id=0)  # fmt: skip
    return transformers.GPT2ForSequenceClassification(config)


def case(name: str):
    """A model in eval mode, its calibration batch and its example inputs."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (16,), generator=generator)
    if name == "vit":
        x = torch.randn(16, 1, 28, 28, generator=generator)
        return build_model(ModelConfig("vit", hidden=(32, 48)), num_classes=3).eval(), x, labels
    tokens = torch.randint(1, 50, (16, 8), generator=generator)
    return hugging_face(name).eval(), tokens, labels


def captured(model: nn.Module, x) -> tuple[dict, dict]:
    """What every Linear-like layer called as a module reads (its last dimension), and
    the value vectors of every ``nn.MultiheadAttention`` (its output projection is called
    functionally, so its inputs cannot be hooked; a head's output mixes its values)."""
    inputs, values = {}, {}

    def value_rows(module, args, kwargs, name):
        value = args[2] if len(args) > 2 else kwargs["value"]
        e = module.embed_dim
        w, b = module.in_proj_weight[2 * e :], module.in_proj_bias[2 * e :]
        values[name] = nn.functional.linear(value, w, b)

    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
            hooks.append(m.register_forward_pre_hook(
                lambda _m, args, n=n: inputs.__setitem__(n, args[0])))  # fmt: skip
        elif isinstance(m, nn.MultiheadAttention):
            hooks.append(m.register_forward_pre_hook(
                lambda m, a, k, n=n: value_rows(m, a, k, n), with_kwargs=True))  # fmt: skip
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return inputs, values


def reader_column(model: nn.Module, tensor: str, dim: int) -> str | None:
    """The layer whose inputs are the columns along ``dim`` of ``tensor``, if any."""
    layer, _, kind = tensor.rpartition(".")
    module = model.get_submodule(layer)
    reads = {nn.Linear: 1}.get(type(module), 0 if type(module).__name__ == "Conv1D" else None)
    return layer if kind == "weight" and reads == dim else None


@pytest.mark.parametrize("name", ["vit", "bert", "gpt2"])
@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "obd"])
def test_heads_and_mlp_units_are_removed_whole_and_compacted_exactly(name, criterion):
    model, x, y = case(name)
    dense_params, dense_flops = parameter_count(model), flops(model, x[:1])
    graph = Graph(model, x[:2])
    kinds = {g.name: g.size for g in graph.groups()}
    heads = [n for n in kinds if n in graph.attention]
    assert len(heads) == (4 if name == "vit" else 2) and all(kinds[n] == 4 for n in heads)
    mlps = [n for n in kinds if n not in heads and "pooler" not in n]  # BERT's pooler too
    assert len(mlps) == len(heads)  # one MLP per block; the residual stream stays
    masks = prunelab.prune(model, f"unit:{criterion}", 0.5, batches=[(x, y)],
                           example_inputs=x[:2])  # fmt: skip
    # every removed head and MLP unit gives exactly zero to whatever reads it
    inputs, values = captured(model, x)
    checked = 0
    for group in Graph(model, x[:2]).groups():
        gone = dead(model, group)
        assert int(gone.sum()) == group.size // 2, group.name
        for s in group.slices:
            reader = reader_column(model, s.tensor, s.dim)
            if reader is not None and reader in inputs:
                columns = gone[s.unit.clamp_min(0)] & (s.unit >= 0)
                assert (inputs[reader][..., columns] == 0).all(), reader
                checked += 1
        if group.name in values:
            head_dim = values[group.name].shape[-1] // group.size
            columns = gone.repeat_interleave(head_dim)
            assert (values[group.name][..., columns] == 0).all(), group.name
            checked += 1
    assert checked >= len(kinds)
    # the compacted model computes what the masked one does, from what the masks keep
    small = prunelab.compact(model, example_inputs=x[:2])
    with torch.no_grad():
        masked, out = first_tensor(model(x)), first_tensor(small(x))
    assert (out - masked).abs().max() <= 1e-4 * masked.abs().max()
    kept = sum(
        int(masks[n].sum()) if n in masks else p.numel() for n, p in model.named_parameters()
    )
    assert parameter_count(small) == kept < 0.8 * dense_params
    assert flops(small, x[:1]) < 0.75 * dense_flops
    small.load_state_dict(small.state_dict())
    again = Graph(small, x[:2]).groups()  # the smaller model is pruned like any other
    assert {g.name: g.size for g in again if g.name in heads} == {n: 2 for n in heads}


def test_a_head_is_its_query_key_and_value_rows_and_its_output_columns():
    """The slices of head 2 of a packed ``in_proj_weight``, written out by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.TransformerEncoderLayer(12, 3, 8, batch_first=True))
    x = torch.randn(2, 5, 6)
    keep = {g.name: torch.tensor([True, True, False]) if "self_attn" in g.name else
            torch.ones(g.size, dtype=torch.bool) for g in Graph(model, x).groups()}  # fmt: skip
    from prunelab.prune.groups import group_masks

    masks = group_masks(model, Graph(model, x).groups(), keep)
    rows = torch.ones(36, dtype=torch.bool)
    for start in (8, 20, 32):  # head 2 of Q, K and V: rows 8-11, 20-23, 32-35
        rows[start : start + 4] = False
    assert torch.equal(masks["1.self_attn.in_proj_weight"], rows[:, None].expand(36, 12))
    assert torch.equal(masks["1.self_attn.in_proj_bias"], rows)
    assert torch.equal(masks["1.self_attn.out_proj.weight"], rows[:12].expand(12, 12) |
                       torch.arange(12).lt(8).expand(12, 12))  # fmt: skip


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "call",
    [
        {},
        {"need_weights": False},
        {"attn_mask": "causal"},
        {"attn_mask": "causal", "need_weights": False, "is_causal": True},
        {"key_padding_mask": True},
        {"average_attn_weights": False, "attn_mask": "bool"},
    ],
)
def test_head_attention_computes_what_multihead_attention_does(batch_first, call):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = HeadAttention(16, 4, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        for proj, w, b in zip((ours.q_proj, ours.k_proj, ours.v_proj),
                              theirs.in_proj_weight.split(16), theirs.in_proj_bias.split(16),
                              strict=True):  # fmt: skip
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.load_state_dict(theirs.out_proj.state_dict())
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)  # 3 sequences of 5
    kwargs = dict(call)
    if kwargs.get("attn_mask") == "causal":
        kwargs["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(5)
    elif kwargs.get("attn_mask") == "bool":
        kwargs["attn_mask"] = torch.rand(5, 5, generator=torch.Generator().manual_seed(1)) < 0.3
        kwargs["attn_mask"].fill_diagonal_(False)
    if kwargs.get("key_padding_mask"):
        kwargs["key_padding_mask"] = torch.arange(5).expand(3, 5) >= torch.tensor([[5], [4], [2]])
    with torch.no_grad():
        expected, expected_weights = theirs(x, x, x, **kwargs)
        out, weights = ours(x, x, x, **kwargs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    if expected_weights is None:
        assert weights is None
    else:
        torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)


def test_unbatched_inputs_and_training_mode_keep_multihead_attentions_shapes():
    ours = HeadAttention(8, 2, 3)
    x = torch.randn(5, 8)
    out, weights = ours(x, x, x)
    assert out.shape == (5, 8) and weights.shape == (5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy.deepcopy(ours).train()(
            torch.randn(5, 2, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8)
        )


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="the onnx extra is not installed"
)
def test_a_compacted_vit_exports_to_onnx_and_runs_in_onnxruntime_with_any_batch(tmp_path):
    from prunelab.onnx_format import OnnxModel, save_onnx

    model, x, y = case("vit")
    prunelab.prune(model, "unit", 0.5, example_inputs=x[:2])
    small = prunelab.compact(model, example_inputs=x[:2])
    assert save_onnx(small, tmp_path / "vit.onnx", x) > 0
    with torch.no_grad():
        torch.testing.assert_close(OnnxModel(tmp_path / "vit.onnx")(x[:5]), small(x[:5]),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip


def test_the_study_counts_heads_and_mlp_units_among_the_units_removed():
    from prunelab.study import _Measured
    from prunelab.study_config import StudyConfig

    model, x, y = case("vit")
    measured = _Measured.of(model, x[:2], StudyConfig())
    prunelab.prune(model, "unit", 0.5, example_inputs=x[:2])
    assert measured.units_removed(model) == 0.5  # 8 heads, 192 units


class PaddedText(nn.Module):
    """Tokens through a post-norm ``nn.TransformerEncoder`` built with its defaults
    (nested tensors for padded batches at inference), its head defined first."""

    def __init__(self, bias_kv: bool = False):
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.embed = nn.Embedding(30, 16)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2
        )
        if bias_kv:  # keys and values with a learned extra row: not prunable by heads
            self.encoder.layers[0].self_attn = nn.MultiheadAttention(16, 4, add_bias_kv=True,
                                                                     batch_first=True)  # fmt: skip

    def forward(self, tokens, padding=None):
        x = self.encoder(self.embed(tokens), src_key_padding_mask=padding)
        if padding is None:
            return self.head(x.mean(1))
        # the mean of real tokens (torch's fused path leaves padded ones zero, its plain
        # path does not)
        kept = (~padding).unsqueeze(-1)
        return self.head((x * kept).sum(1) / kept.sum(1))


def padded_batch():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 30, (6, 7), generator=generator)
    padding = torch.arange(7).expand(6, 7) >= torch.tensor([[7], [6], [5], [4], [7], [3]])
    return tokens, padding


def test_a_compacted_encoder_runs_padded_batches_and_per_head_masks_follow_their_heads():
    torch.manual_seed(0)
    model = PaddedText().eval()
    tokens, padding = padded_batch()
    prunelab.prune(model, "unit", 0.5, example_inputs=(tokens, padding))
    small = prunelab.compact(model, example_inputs=(tokens, padding))
    assert isinstance(small.encoder.layers[0].self_attn, HeadAttention)
    with torch.inference_mode():  # the encoder's nested-tensor path, where it can take it
        expected, out = model(tokens, padding), small(tokens, padding)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # a mask per sequence and original head reaches the heads that were kept
    masked_attention = model.encoder.layers[0].self_attn
    kept = small.encoder.layers[0].self_attn
    x = torch.randn(6, 7, 16)
    per_head = torch.rand(6 * 4, 7, 7, generator=torch.Generator().manual_seed(2)) < 0.3
    per_head[:, torch.arange(7), torch.arange(7)] = False
    with torch.no_grad():
        expected = masked_attention(x, x, x, attn_mask=per_head, need_weights=False)[0]
        out = kept(x, x, x, attn_mask=per_head, need_weights=False)[0]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="batch \\* 4 heads"):
        kept(x, x, x, attn_mask=per_head[:8])


def test_attention_whose_heads_stay_keeps_its_form_and_patterns_name_attention():
    torch.manual_seed(0)
    model = PaddedText(bias_kv=True).eval()
    tokens, padding = padded_batch()
    names = [g.name for g in Graph(model, (tokens, padding)).groups()]
    assert "encoder.layers.0.self_attn" not in names  # add_bias_kv: no head groups
    assert "encoder.layers.1.self_attn" in names
    prunelab.prune(model, "unit", 0.5, example_inputs=(tokens, padding),
                   ignore=["encoder.layers.1.self_attn"])  # fmt: skip
    small = prunelab.compact(model, example_inputs=(tokens, padding))
    for layer in small.encoder.layers:  # no head removed: the fused form stays
        assert type(layer.self_attn) is nn.MultiheadAttention
        assert layer.linear1.out_features == 16
    with pytest.raises(ValueError, match="matches no Linear or Conv layer or attention"):
        prunelab.prune(
            model, "unit", 0.5, example_inputs=(tokens, padding), ignore=["encoder.layers.9.*"]
        )


def test_shrinking_heads_keeps_the_modules_mode():
    from prunelab.prune.heads import ATTENTION, shrink_heads

    model = nn.Sequential(nn.MultiheadAttention(8, 2, dropout=0.5)).eval()
    shrink_heads(model, "0", ATTENTION["torch"], torch.tensor([1]))
    assert isinstance(model[0], HeadAttention) and not model[0].training
    x = torch.randn(3, 1, 8)
    torch.testing.assert_close(model[0](x, x, x)[0], model[0](x, x, x)[0])  # no dropout


def test_hugging_face_models_take_keyword_inputs_and_name_patterns():
    bert, tokens, labels = case("bert")
    inputs = {"input_ids": tokens[:2], "attention_mask": torch.ones_like(tokens[:2])}
    prunelab.prune(bert, "unit", 0.5, example_inputs=inputs,
                   ignore=["bert.encoder.layer.0.attention"])  # fmt: skip
    small = prunelab.compact(bert, example_inputs=inputs)
    assert small.bert.encoder.layer[0].attention.self.num_attention_heads == 4
    assert small.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    gpt2, tokens, labels = case("gpt2")
    masks = prunelab.prune(gpt2, "unit", 0.5, example_inputs=tokens[:2],
                           include=["transformer.h.1.mlp.c_fc"])  # fmt: skip
    assert {n.rpartition(".")[0] for n in masks} == {"transformer.h.1.mlp.c_fc",
                                                    "transformer.h.1.mlp.c_proj"}  # fmt: skip


class MyAttention(nn.Module):
    """Attention of a user's own: separate q, k, v and out projections, heads by reshape."""

    def __init__(self, width: int = 16, heads: int = 4):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q, self.k, self.v))  # fmt: skip
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


def test_the_readmes_own_attention_entry_prunes_and_compacts_whole_heads():
    from prunelab.prune.heads import ATTENTION, AttentionKind, Layout, head_entries, sliced_linear

    def layout(m):  # as in the README
        runs = [(f"{p}.weight", 0, 0) for p in ("q", "k", "v")] + [("out.weight", 1, 0)]
        return Layout(m.heads, m.head_dim, tuple(runs))

    def shrink(m, keep):
        rows = head_entries(keep, m.head_dim)
        m.q, m.k, m.v = (sliced_linear(p, rows) for p in (m.q, m.k, m.v))
        m.out, m.heads = sliced_linear(m.out, cols=rows), len(keep)
        return m

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), MyAttention(), nn.Flatten(), nn.Linear(16 * 5, 3))
    x = torch.randn(4, 5, 8)
    unknown = copy.deepcopy(model)
    prunelab.prune(unknown, "unit", 0.5, example_inputs=x)
    with pytest.raises(prunelab.CompactionError, match="ATTENTION"):
        prunelab.compact(unknown, example_inputs=x)
    ATTENTION["mine"] = AttentionKind(lambda m: isinstance(m, MyAttention), layout, shrink)
    try:
        prunelab.prune(model, "unit", 0.5, example_inputs=x)
        small = prunelab.compact(model, example_inputs=x)
    finally:
        del ATTENTION["mine"]
    assert small[1].heads == 2 and small[1].q.out_features == 8
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


class Wrapped(nn.Module):
    """A chain that is not an ``nn.Sequential``: traced, and pruned by groups."""

    def __init__(self, chain: nn.Sequential):
        super().__init__()
        self.chain = chain

    def forward(self, x):
        return self.chain(x)


@pytest.mark.parametrize("criterion", ["obs", "obc", "obc-rounds"])
def test_group_obs_chooses_and_refits_as_the_chains_obs_does(criterion):
    """An independent reference: the chain's unit OBS (tested against brute force in
    tests/test_obs.py) on the same layers removes the same units and re-fits the same
    weights."""
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(),
                          nn.Linear(8, 3))  # fmt: skip
    wrapped = Wrapped(copy.deepcopy(chain))
    x = torch.randn(64, 12)
    batches = [(x, torch.randint(0, 3, (64,)))]
    theirs = prunelab.prune(chain, f"unit:{criterion}", 0.5, batches=batches)
    ours = prunelab.prune(wrapped, f"unit:{criterion}", 0.5, batches=batches, example_inputs=x)
    for name, mask in theirs.items():  # the same units (ours also mask the columns reading them)
        rows = ours[f"chain.{name}"].reshape(len(mask), -1).any(1)
        assert torch.equal(rows, mask.reshape(len(mask), -1).any(1)), name
    for name, value in chain.state_dict().items():
        torch.testing.assert_close(wrapped.chain.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_group_obs_prunes_berts_heads_and_mlp_units_and_names_what_it_cannot_solve():
    model, tokens, labels = case("bert")
    batches = [(tokens, labels)]
    masks = prunelab.prune(model, "unit:obs", 0.5, batches=batches, example_inputs=tokens[:2])
    assert int((~masks["bert.encoder.layer.0.attention.output.dense.weight"][0]).sum()) == 16
    small = prunelab.compact(model, example_inputs=tokens[:2])  # checks the outputs agree
    assert small.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    vit, x, y = case("vit")  # nn.MultiheadAttention calls its output projection functionally
    with pytest.raises(ValueError, match="'encoder.layers.0.self_attn' is read by "
                                         "'encoder.layers.0.self_attn.out_proj', which is "
                                         "called functionally"):  # fmt: skip
        prunelab.prune(vit, "unit:obs", 0.5, batches=[(x, y)], example_inputs=x[:2])
    prunelab.prune(vit, "unit:obs", 0.5, batches=[(x, y)], example_inputs=x[:2],
                   ignore=["*self_attn"])  # fmt: skip
