"""Tasks beyond classification: each loss and metric against a computation written
out here, the curvature criteria against exact Hessians, and a small causal language
model pruned with perplexity as its metric."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab import compact, find_budget, prune
from prunelab.prune.curvature import empirical_fisher_diagonal, gauss_newton_diagonal
from prunelab.splits import Split
from prunelab.tasks import TASKS, TaskError, custom_task
from prunelab.train import TrainConfig, evaluate, train

TEXT = (Path(__file__).parent / "fixtures" / "pruning.txt").read_text()


def test_regression_metrics_are_r2_per_output_averaged_and_negative_mse():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=generator), torch.randn(50, 2, generator=generator)
    y[:, 1] += 100  # a column far from the other: pooled, its mean would look like skill
    model = nn.Linear(3, 2)
    with torch.no_grad():
        out = model(x)
    sse = ((out - y) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    r2 = evaluate(model, Split(x, y), batch_size=7, task="regression")
    assert r2.loss == pytest.approx(sse.sum().item() / y.numel(), rel=1e-6)
    assert r2.metric == pytest.approx((1 - sse / sst).mean().item(), rel=1e-6)
    means = nn.Linear(3, 2)
    with torch.no_grad():
        means.weight.zero_()
        means.bias.copy_(y.mean(0))
    assert evaluate(means, Split(x, y), task="regression").metric == pytest.approx(0, abs=1e-9)
    sse = sse.sum().item()
    mse = evaluate(model, Split(x, y), batch_size=7, task="regression-mse")
    assert mse.metric == pytest.approx(-sse / y.numel(), rel=1e-6)


def test_a_one_output_model_fits_targets_of_one_number_per_sample():
    x, y = torch.randn(8, 3), torch.randn(8)
    assert evaluate(nn.Linear(3, 1), Split(x, y), task="regression").loss > 0
    with pytest.raises(TaskError, match="one output per target"):
        TASKS["regression"].check(torch.zeros(8, 2), y)
    with pytest.raises(TaskError, match="float targets"):
        TASKS["regression"].check(torch.zeros(8, 1), y.long())
    with pytest.raises(TaskError, match="integer labels"):
        TASKS["classification"].check(torch.zeros(8, 3), y)


def test_perplexity_is_the_exponent_of_the_mean_next_token_cross_entropy():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 5, generator=generator)
    tokens = torch.randint(0, 5, (4, 6), generator=generator)
    tokens[0, 3] = -100  # padding: predicted by position 2, counts for nothing

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(()))

        def forward(self, i):
            return logits[i] + self.anchor

    losses = [
        F.cross_entropy(logits[n, t], tokens[n, t + 1])
        for n in range(4) for t in range(5) if tokens[n, t + 1] != -100
    ]  # fmt: skip
    mean = torch.stack(losses).mean().item()
    result = evaluate(Fixed(), Split(torch.arange(4), tokens), batch_size=3, task="lm")
    assert result.loss == pytest.approx(mean, rel=1e-6)
    assert result.metric == pytest.approx(math.exp(mean), rel=1e-6)
    assert not TASKS["lm"].metric.higher_is_better


def exact_diagonal(model, x, y, loss, kind):
    """Mean over samples of the diagonal of J^T H J (Gauss-Newton), or of g g^T (Fisher),
    from the full Jacobian and Hessian of each sample's own loss."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for xi, yi in zip(x, y, strict=True):

        def output_of(*values, xi=xi):
            named = dict(zip(params, values, strict=True))
            return torch.func.functional_call(model, named, (xi[None],))[0]

        def sample_loss(o, yi=yi):
            return loss(o[None], yi[None])

        out = output_of(*params.values()).detach()
        jac = torch.autograd.functional.jacobian(output_of, tuple(params.values()))
        if kind == "gauss-newton":
            h = torch.autograd.functional.hessian(sample_loss, out)
            h = h.reshape(out.numel(), out.numel())
        else:
            g = torch.autograd.functional.jacobian(sample_loss, out)
            h = torch.outer(g.flatten(), g.flatten())
        for (name, p), j in zip(params.items(), jac, strict=True):
            j = j.reshape(out.numel(), -1)
            total[name] += (j * (h @ j)).sum(0).view_as(p)
    return {name: t / len(x) for name, t in total.items()}


@pytest.mark.parametrize("kind", ["gauss-newton", "fisher"])
def test_curvature_of_the_regression_loss_matches_exact_per_sample_hessians(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    layers = {"0": model[0], "2": model[2]}
    estimate = gauss_newton_diagonal if kind == "gauss-newton" else empirical_fisher_diagonal
    ours = estimate(model, layers, [(x, y)], "regression")
    exact = exact_diagonal(model, x, y, TASKS["regression"].loss, kind)
    for name in layers:
        for part in ("weight", "bias"):
            torch.testing.assert_close(ours[name][part], exact[f"{name}.{part}"])


@pytest.mark.parametrize("kind", ["gauss-newton", "fisher"])
def test_curvature_of_the_next_token_loss_matches_exact_per_sample_hessians(kind):
    """Two tokens per sample: one prediction, whose Hessian block is exact (the random
    signs that keep several positions' blocks apart change nothing)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Tanh(), nn.Linear(4, 5))
    tokens = torch.randint(0, 5, (6, 2))
    estimate = gauss_newton_diagonal if kind == "gauss-newton" else empirical_fisher_diagonal
    ours = estimate(model, {"2": model[2]}, [(tokens, tokens)], "lm")
    exact = exact_diagonal(model, tokens, tokens, TASKS["lm"].loss, kind)
    torch.testing.assert_close(ours["2"]["weight"], exact["2.weight"])
    torch.testing.assert_close(ours["2"]["bias"], exact["2.bias"])


class Decoder(nn.Module):
    """A GPT-style causal language model: token and position embeddings, pre-norm
    blocks of causal self-attention and an MLP, and a head tied to nothing."""

    def __init__(self, vocab: int, width: int = 48, heads: int = 4, layers: int = 2, length=32):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.randn(length, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        x = self.tokens(tokens) + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        hidden = 4 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x):
        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
        h = self.norm1(x)
        x = x + self.attention(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def windows(ids: torch.Tensor, length: int, stride: int) -> torch.Tensor:
    return torch.stack([ids[i : i + length] for i in range(0, len(ids) - length, stride)])


@pytest.fixture(scope="module")
def language_model():
    """The decoder trained for 480 steps on the text, and the text's windows: 2.4 kB is
    too little to generalise from, so perplexity is measured on the text it learnt
    (2.2 here, against 3.2 after magnitude pruning and 2.5 after OBS)."""
    chars = sorted(set(TEXT))
    ids = torch.tensor([chars.index(c) for c in TEXT])
    text = Split(*(2 * [windows(ids, 32, 3)]))  # the targets are the tokens themselves
    torch.manual_seed(0)
    model = Decoder(len(chars))
    train(model, text, text, TrainConfig(epochs=20, lr=3e-3, batch_size=32), seed=0, task="lm")
    return model, text, text


def perplexity_after(model, method, split, calibration, **kwargs):
    pruned = copy.deepcopy(model)
    prune(pruned, method, 0.5, batches=calibration, task="lm", **kwargs)
    return pruned, evaluate(pruned, split, task="lm").metric


def test_a_language_model_learns_and_obs_keeps_its_perplexity_better_than_magnitude(
    language_model,
):
    model, train_split, val_split = language_model
    dense = evaluate(model, val_split, task="lm").metric
    assert dense < len(set(TEXT)) / 4  # it learnt the text
    calibration = train_split.sample(256, seed=0, batch_size=64)
    _, magnitude = perplexity_after(model, "weight", val_split, calibration)
    _, obs = perplexity_after(model, "weight:obs", val_split, calibration)
    print(f"perplexity: dense {dense:.2f}, magnitude {magnitude:.2f}, obs {obs:.2f}")
    assert dense < obs < magnitude


def test_a_loss_criterion_on_the_wrong_task_says_so(language_model):
    model, train_split, _ = language_model
    calibration = train_split.sample(32, seed=0)
    with pytest.raises(TaskError, match=r"taylor reads the classification loss.*task= right"):
        prune(copy.deepcopy(model), "unit:taylor", 0.5, batches=calibration)
    with pytest.raises(ValueError, match="'accuracy' names a built-in metric"):
        custom_task(F.mse_loss, lambda o, t: 0.0, name="accuracy")


@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "obd", "fisher"])
def test_heads_and_mlp_units_of_a_language_model_prune_and_compact(language_model, criterion):
    model, train_split, val_split = language_model
    calibration = train_split.sample(64, seed=0, batch_size=32)
    pruned, perplexity = perplexity_after(model, f"unit:{criterion}", val_split, calibration)
    assert math.isfinite(perplexity)
    small = compact(pruned, val_split.head(2))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert small.blocks[0].attention.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(small(val_split.head(4)), pruned.eval()(val_split.head(4)))


def test_the_budget_of_a_language_model_is_read_in_perplexity(language_model):
    """Perplexity is lower-better: a tolerance of 0.5 allows that much more, never less."""
    model, train_split, val_split = language_model
    loader = list(train_split.batches(64))
    result = find_budget(
        model, loader, list(val_split.batches(64)), structure="weight", max_drop=0.5,
        task="lm", finetune=TrainConfig(epochs=0), resolution=0.1,
    )  # fmt: skip
    answer = result.answer
    assert answer.metric == "perplexity"
    for probe in answer.probes:
        within = probe.val_metric <= answer.dense_val_metric + 0.5
        assert within == (probe.k <= answer.k), (probe, answer.k)
    assert "perplexity" in answer.sentence


def test_a_task_of_two_callables_streams_its_metric_and_gives_fisher_its_gradients():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 3, generator=generator), torch.randn(40, 2, generator=generator)
    model = nn.Linear(3, 2)
    mae = custom_task(F.mse_loss, lambda o, t: (o - t).abs().mean(), name="mae",
                      higher_is_better=False)  # fmt: skip
    with torch.no_grad():
        expected = (model(x) - y).abs().mean().item()
    assert evaluate(model, Split(x, y), batch_size=16, task=mae).metric == pytest.approx(expected)
    layers = {"": model}
    ours = empirical_fisher_diagonal(model, layers, [(x, y)], mae)
    theirs = empirical_fisher_diagonal(model, layers, [(x, y)], "regression")
    torch.testing.assert_close(ours[""]["weight"], theirs[""]["weight"])
    with pytest.raises(ValueError, match="gives no gauss-newton factors"):
        gauss_newton_diagonal(model, layers, [(x, y)], mae)
    loaders = [list(Split(x, y).batches(10))] * 2
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    answer = find_budget(model, *loaders, structure="weight", task=mae, max_drop=0.05,
                         finetune=TrainConfig(epochs=0), resolution=0.2).answer  # fmt: skip
    assert answer.metric == "mae" and "mae" in answer.sentence
    for probe in answer.probes:  # lower is better: within means at most 0.05 above dense
        assert (probe.val_metric <= answer.dense_val_metric + 0.05) == (probe.k <= answer.k)
