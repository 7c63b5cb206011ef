import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.data import load_dataset
from prunelab.models import ModelConfig, build_model
from prunelab.splits import Split
from prunelab.train import OPTIMIZERS, TrainConfig, evaluate, train


def test_training_learns_and_records_every_epoch(tiny_data_dir):
    ds = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=(64, 32)))
    history = train(model, ds.train, ds.val, TrainConfig(epochs=3, batch_size=32), seed=0)
    assert [r.epoch for r in history] == [1, 2, 3]
    assert history[-1].train_loss < history[0].train_loss
    assert evaluate(model, ds.test).metric > 0.9


def test_training_is_reproducible_from_its_seed(tiny_data_dir):
    ds = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100)
    config = TrainConfig(epochs=1, batch_size=50, augment=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = build_model(ModelConfig(hidden=(16,), dropout=(0.3,)))
        train(model, ds.train, ds.val, config, seed=7)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_training_leaves_the_global_generator_alone(tiny_data_dir):
    ds = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100, train_limit=64)
    model = build_model(ModelConfig(hidden=(8, 8), dropout=(0.5, 0.5)))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train(model, ds.train, ds.val, TrainConfig(epochs=1), seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_after_step_runs_after_every_optimizer_step(tiny_data_dir):
    ds = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100, train_limit=100)
    calls = []
    model = build_model(ModelConfig(hidden=(8,)))
    train(model, ds.train, ds.val, TrainConfig(epochs=2, batch_size=30), seed=0,
          after_step=calls.append)  # fmt: skip
    assert len(calls) == 2 * 4 and all(m is model for m in calls)


def test_evaluate_matches_a_hand_computed_loss_and_accuracy():
    from prunelab.data import Split

    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    x = torch.tensor([1.0, -2.0, 3.0]).view(3, 1, 1, 1)
    y = torch.tensor([0, 0, 1])
    result = evaluate(model, Split(x, y), batch_size=2)
    logits = torch.stack([x.flatten(), -x.flatten()], dim=1)
    assert abs(result.loss - nn.functional.cross_entropy(logits, y).item()) < 1e-6
    assert result.metric == 1 / 3


@pytest.mark.parametrize(
    "recipe",
    [{"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
     {"optimizer": "rmsprop", "momentum": 0.5, "weight_decay": 1e-3},
     {"optimizer": "adam", "weight_decay": 1e-4}],
)  # fmt: skip
def test_momentum_nesterov_and_weight_decay_reach_the_optimizer(recipe):
    """Three steps of train() equal three steps of the torch optimizer built by hand."""
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    config = TrainConfig(epochs=1, batch_size=8, lr=0.05, lr_schedule="constant", **recipe)
    torch.manual_seed(0)
    ours, theirs = nn.Linear(5, 3), nn.Linear(5, 3)
    theirs.load_state_dict(ours.state_dict())
    train(ours, Split(x, y), Split(x, y), config, seed=4)
    options = {k: v for k, v in recipe.items() if k != "optimizer"}
    optimizer = OPTIMIZERS[recipe["optimizer"]](theirs.parameters(), lr=0.05, **options)
    order = torch.randperm(24, generator=torch.Generator().manual_seed(4))
    for start in range(0, 24, 8):
        idx = order[start : start + 8]
        optimizer.zero_grad()
        F.cross_entropy(theirs(x[idx]), y[idx]).backward()
        optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_momentum_settings_that_mean_nothing_are_refused():
    with pytest.raises(ValueError, match="adam has no momentum"):
        TrainConfig(momentum=0.9)
    with pytest.raises(ValueError, match="Nesterov momentum needs --optimizer sgd"):
        TrainConfig(optimizer="sgd", nesterov=True)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"batch_size": 0}, {"epochs": -1}])
def test_a_recipe_that_cannot_train_is_refused(bad):
    with pytest.raises(ValueError, match="need lr > 0, batch_size >= 1 and epochs >= 0"):
        TrainConfig(**bad)
