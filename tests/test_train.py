import torch
from torch import nn

from prunelab.data import load_dataset
from prunelab.models import ModelConfig, build_model
from prunelab.train import TrainConfig, evaluate, train


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
