"""prunelab's masks and torch.nn.utils.prune's, each read into the other."""

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from prunelab import Masks, PruneMethod, prune


def torch_pruned_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    torch_prune.l1_unstructured(model[1], "weight", amount=0.6)
    torch_prune.ln_structured(model[3], "weight", amount=0.5, n=2, dim=0)
    torch_prune.l1_unstructured(model[3], "weight", amount=0.25)  # a container of two
    torch_prune.random_unstructured(model[3], "bias", amount=0.5)
    return model


def test_torch_prune_masks_round_trip_with_identical_masks_and_outputs():
    model = torch_pruned_model()
    x = torch.randn(8, 20)
    expected_out = model(x)
    expected = {"1.weight": model[1].weight_mask, "3.weight": model[3].weight_mask,
                "3.bias": model[3].bias_mask}  # fmt: skip
    expected = {name: mask.bool().clone() for name, mask in expected.items()}

    masks = Masks.from_torch_prune(model)
    assert set(masks) == set(expected)
    assert all(torch.equal(masks[name], expected[name]) for name in expected)
    assert not any(torch_prune.is_pruned(m) for m in model.modules())  # a plain model
    assert set(model.state_dict()) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    assert torch.equal(model(x), expected_out)
    assert all(torch.equal(model.get_parameter(n) == 0, ~m | (model.get_parameter(n) == 0))
               for n, m in masks.items())  # fmt: skip

    masks.to_torch_prune(model)
    assert torch.equal(model[1].weight_mask.bool(), expected["1.weight"])
    assert torch.equal(model[3].bias_mask.bool(), expected["3.bias"])
    assert torch.equal(model(x), expected_out)
    again = Masks.from_torch_prune(model)
    assert all(torch.equal(again[name], expected[name]) for name in expected)


def test_prunelab_masks_become_torch_prune_masks_that_hold_during_training():
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    masks = prune(model, PruneMethod("weight"), 0.5, include_last=True)
    masks.to_torch_prune(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 20)).square().sum().backward()
    optimizer.step()
    model(torch.randn(8, 20))  # the pre-hooks recompute each weight as orig * mask
    for name, mask in masks.items():
        module_name, _, param = name.rpartition(".")
        assert torch.all(getattr(model.get_submodule(module_name), param)[~mask] == 0)


def test_prune_on_a_model_with_torch_prune_hooks_says_what_to_do():
    model = torch_pruned_model()
    with pytest.raises(ValueError, match=r"torch.nn.utils.prune .*Masks.from_torch_prune"):
        prune(model, PruneMethod("weight"), 0.5)


def test_masks_for_parameters_the_model_lacks_are_refused():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(KeyError, match="'9.weight'"):
        Masks({"9.weight": torch.ones(2, 4, dtype=torch.bool)}).to_torch_prune(model)
