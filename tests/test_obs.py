import itertools

import pytest
import torch
from torch import nn

from prunelab.models import ModelConfig, build_model, prunable_layers
from prunelab.prune import PruneMethod, prune
from prunelab.prune.obs import choose_units, obs_rows, solve_rows


def problem(n=200, d=6, rows=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(
        d, d, generator=g, dtype=torch.float64
    )
    w = torch.randn(rows, d, generator=g, dtype=torch.float64)
    return x, w, 2 * x.T @ x / n


def test_removing_one_weight_reaches_the_brute_force_least_squares_optimum():
    x, w, h = problem()
    new, keep = obs_rows(w, h, remove=1)
    for r in range(w.shape[0]):
        best_error, best = float("inf"), None
        for q in range(w.shape[1]):  # brute force: try every weight, re-fit the rest
            kept = [i for i in range(w.shape[1]) if i != q]
            fit = torch.linalg.lstsq(x[:, kept], x @ w[r]).solution
            error = ((x[:, kept] @ fit - x @ w[r]) ** 2).mean()
            if error < best_error:
                best_error, best = error, (q, fit)
        q, fit = best
        assert not keep[r, q] and int(keep[r].sum()) == w.shape[1] - 1
        torch.testing.assert_close(
            new[r, [i for i in range(w.shape[1]) if i != q]], fit, rtol=1e-4, atol=1e-4
        )
        assert new[r, q] == 0


def test_kept_weights_are_re_solved_exactly_for_any_kept_set():
    x, w, h = problem(d=5, rows=2)
    keep = torch.tensor([[True, False, True, True, False], [False, True, True, False, True]])
    _check_solves(x, w, h, keep)
    # more pruned than kept: solved on the pruned side
    _check_solves(x, w, h, ~keep)


def _check_solves(x, w, h, keep):
    new, inv_diag = solve_rows(w, h, torch.linalg.inv(h), keep, with_inverse=True)
    for r in range(2):
        kept = keep[r].nonzero().flatten()
        fit = torch.linalg.lstsq(x[:, kept], x @ w[r]).solution
        torch.testing.assert_close(new[r, kept], fit, rtol=1e-4, atol=1e-4)
        assert (new[r, ~keep[r]] == 0).all()
        expected = torch.linalg.inv(h[kept][:, kept]).diagonal()
        torch.testing.assert_close(inv_diag[r, kept], expected, rtol=1e-4, atol=1e-6)


def test_greedy_rounds_never_do_worse_than_one_shot_on_this_problem():
    x, w, h = problem(d=8, rows=4, seed=3)

    def error(v):
        return float(((x @ (v - w).T) ** 2).mean())

    one, _ = obs_rows(w, h, remove=5, rounds=1)
    greedy, _ = obs_rows(w, h, remove=5, rounds=5)
    assert error(greedy) <= error(one) + 1e-12


def test_unit_group_choice_matches_brute_force_on_a_small_consumer():
    x, w, h = problem(d=5, rows=3, seed=5)
    groups = [torch.tensor([i]) for i in range(5)]
    chosen = choose_units(w, h, groups, remove=2, rounds=1)

    def refit_error(removed):
        kept = [i for i in range(5) if i not in removed]
        fit = torch.linalg.lstsq(x[:, kept], x @ w.T).solution
        return float(((x[:, kept] @ fit - x @ w.T) ** 2).sum())

    singles = sorted(range(5), key=lambda j: refit_error([j]))
    assert sorted(chosen) == sorted(singles[:2])  # one round: the two best single removals
    greedy = choose_units(w, h, groups, remove=2, rounds=2)
    first = singles[0]
    second = min((j for j in range(5) if j != first), key=lambda j: refit_error([first, j]))
    assert greedy == [first, second]  # two rounds: the second choice sees the first
    best_pair = min(itertools.combinations(range(5), 2), key=refit_error)
    assert refit_error(greedy) <= refit_error(chosen) * (1 + 1e-9)
    assert refit_error(best_pair) <= refit_error(greedy) * (1 + 1e-9)


def trained_tiny_mlp(tiny_data_dir):
    from prunelab.data import load_dataset
    from prunelab.train import TrainConfig, train

    ds = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100)
    model = build_model(ModelConfig(hidden=(40, 20)), seed=0)
    train(model, ds.train, ds.val, TrainConfig(epochs=3, batch_size=32), seed=0)
    return model, ds


@pytest.mark.parametrize("k", [0.5, 0.9])
def test_obs_layers_reproduce_dense_outputs_better_than_magnitude(tiny_data_dir, k):
    model, ds = trained_tiny_mlp(tiny_data_dir)
    calib = [(ds.train.x[:256], ds.train.y[:256])]
    held_out = ds.test.x
    obs, magnitude = (
        build_model(ModelConfig(hidden=(40, 20))),
        build_model(ModelConfig(hidden=(40, 20))),
    )
    obs.load_state_dict(model.state_dict())
    magnitude.load_state_dict(model.state_dict())
    prune(obs, PruneMethod("weight", "obs"), k, batches=calib)
    prune(magnitude, PruneMethod("weight"), k)
    dense_layers = prunable_layers(model)
    with torch.no_grad():
        inputs = {}
        hooks = [
            layer.register_forward_hook(lambda m, a, o, n=name: inputs.__setitem__(n, a[0]))
            for name, layer in dense_layers.items()
        ]
        model(held_out)
        for h in hooks:
            h.remove()
        for name, layer in dense_layers.items():
            x = inputs[name]  # the same inputs for all three: the layer's own error
            dense_out = layer(x)
            err_obs = (obs.get_submodule(name)(x) - dense_out).pow(2).mean()
            err_mag = (magnitude.get_submodule(name)(x) - dense_out).pow(2).mean()
            assert err_obs < err_mag, name


def test_unit_obs_corrects_the_next_layer_and_zeroes_whole_units(tiny_data_dir):
    model, ds = trained_tiny_mlp(tiny_data_dir)
    calib = [(ds.train.x[:256], ds.train.y[:256])]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = prune(model, PruneMethod("unit", "obs"), 0.5, batches=calib)
    layer = model[1]
    dead = ~masks["1.bias"]
    assert (
        int(dead.sum()) == 20 and (layer.weight[dead] == 0).all() and (layer.bias[dead] == 0).all()
    )
    assert (model[3].weight[:, dead] == 0).all()  # the next layer's columns for them
    assert not torch.equal(model[3].weight[:, ~dead], before["3.weight"][:, ~dead])


def test_unit_obs_refuses_a_layer_nothing_consumes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="no layer consumes"):
        prune(model, PruneMethod("unit", "obs"), 0.5, batches=[(torch.randn(8, 4), None)],
              include_last=True)  # fmt: skip
