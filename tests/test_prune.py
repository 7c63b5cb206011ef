import pytest
import torch
from torch import nn

from prunelab.metrics import units_removed, weight_sparsity
from prunelab.models import ModelConfig, build_model, prunable_layers
from prunelab.prune import Masks, PruneMethod, prune
from prunelab.prune.allocate import layerwise

WEIGHT, UNIT = PruneMethod("weight"), PruneMethod("unit")


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(hidden=(37, 23, 11)))


@pytest.mark.parametrize("k", [0.0, 0.1, 0.25, 0.5, 0.9, 0.95, 0.99])
def test_weight_pruning_zeroes_exactly_round_k_n_smallest_per_layer(k):
    model = small_model()
    before = {n: layer.weight.detach().clone() for n, layer in prunable_layers(model).items()}
    prune(model, WEIGHT, k)
    for name, layer in prunable_layers(model).items():
        w0, w = before[name], layer.weight.detach()
        removed = w == 0
        assert int(removed.sum()) == round(k * w0.numel())
        if 0 < removed.sum() < w0.numel():
            assert w0[removed].abs().max() <= w0[~removed].abs().min()
        assert torch.equal(w[~removed], w0[~removed])


@pytest.mark.parametrize("k", [0.25, 0.5, 0.8, 0.9])
def test_unit_pruning_zeroes_whole_rows_and_biases_of_lowest_norm_units(k):
    model = small_model()
    before = {n: layer.weight.detach().norm(dim=1) for n, layer in prunable_layers(model).items()}
    prune(model, UNIT, k)
    for name, layer in prunable_layers(model).items():
        dead_rows = (layer.weight == 0).all(dim=1)
        assert torch.equal(dead_rows, layer.bias == 0)
        assert int(dead_rows.sum()) == round(k * layer.out_features)
        norms = before[name]
        assert norms[dead_rows].max() <= norms[~dead_rows].min()
        assert not (layer.weight[~dead_rows] == 0).any()


def test_logits_layer_stays_dense_by_default_and_can_be_included():
    model = small_model()
    prune(model, WEIGHT, 0.5)
    assert not (model[-1].weight == 0).any()
    prune(model, WEIGHT, 0.5, include_last=True)
    assert int((model[-1].weight == 0).sum()) == round(0.5 * model[-1].weight.numel())


def test_every_layer_keeps_at_least_one_unit():
    scores = {"tiny": torch.arange(10.0)}
    keep = layerwise(scores, 0.99)
    assert keep["tiny"].tolist() == [False] * 9 + [True]


def test_measured_sparsity_and_units_removed_match_k():
    model = small_model()
    prune(model, UNIT, 0.5)
    layers = prunable_layers(model)
    n_units = sum(layer.out_features for layer in layers.values())
    expected = sum(round(0.5 * layer.out_features) for layer in layers.values()) / n_units
    assert units_removed(layers) == pytest.approx(expected)
    assert weight_sparsity(layers) == pytest.approx(
        sum(round(0.5 * m.out_features) * m.in_features for m in layers.values())
        / sum(m.weight.numel() for m in layers.values())
    )


@pytest.mark.parametrize("method", [WEIGHT, UNIT])
def test_masks_survive_adam_training(method):
    model = small_model()
    masks = prune(model, method, 0.7)
    hold = masks.holder(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    for _ in range(25):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        hold()  # as the README calls it
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all()
        assert (params[name][mask] != 0).all()


def test_masks_round_trip_through_safetensors(tmp_path):
    model = small_model()
    masks = prune(model, UNIT, 0.5)
    masks.save(tmp_path / "m.safetensors")
    back = Masks.load(tmp_path / "m.safetensors")
    assert set(back) == set(masks) and all(torch.equal(back[n], masks[n]) for n in masks)


def test_masks_that_do_not_fit_the_model_are_refused():
    model = small_model()
    with pytest.raises(KeyError, match="nope.weight"):
        Masks({"nope.weight": torch.ones(3, dtype=torch.bool)}).apply_(model)
    with pytest.raises(ValueError, match="shape"):
        Masks({"1.weight": torch.ones(3, dtype=torch.bool)}).apply_(model)
    with pytest.raises(TypeError, match="bool"):
        Masks({"1.weight": torch.ones(3)})


@pytest.mark.parametrize("k", [-0.1, 1.0, 1.5])
def test_k_outside_unit_interval_is_refused(k):
    with pytest.raises(ValueError, match=r"k must be in \[0, 1\)"):
        prune(small_model(), WEIGHT, k)


def test_method_names_parse_with_magnitude_as_default():
    assert PruneMethod.parse("weight") == PruneMethod("weight", "magnitude")
    assert PruneMethod.parse("unit:magnitude").name == "unit"
    with pytest.raises(ValueError, match="unknown structure 'nonsense'"):
        PruneMethod.parse("nonsense")
    with pytest.raises(ValueError, match="unknown criterion 'voodoo'; choose from magnitude"):
        PruneMethod.parse("weight:voodoo")


def test_masks_held_together_keep_only_what_both_keep():
    import torch

    from prunelab.prune.masks import Masks

    now = Masks({"a": torch.tensor([True, True, False]), "b": torch.tensor([True])})
    earlier = Masks({"a": torch.tensor([False, True, True]), "c": torch.tensor([False])})
    both = now & earlier
    assert both["a"].tolist() == [False, True, False]
    assert both["b"].tolist() == [True] and both["c"].tolist() == [False]
