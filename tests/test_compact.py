import pytest
import torch
from torch import nn

from prunelab.compact import CompactionError, compact, parameter_count
from prunelab.models import ModelConfig, build_model, prunable_layers
from prunelab.prune import PruneMethod, prune


def calibration():
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))]


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
@pytest.mark.parametrize("criterion", ["magnitude", "obs"])
@pytest.mark.parametrize("k", [0.5, 0.9])
def test_compacted_model_computes_what_the_masked_model_computes(name, criterion, k):
    hidden = (48, 24, 12) if name == "mlp" else None
    model = build_model(ModelConfig(name=name, hidden=hidden), seed=0)
    prune(model, PruneMethod("unit", criterion), k, batches=calibration())
    small = compact(model)
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=0)
    assert parameter_count(small) < parameter_count(model)


def test_compaction_removes_exactly_the_pruned_units_and_their_input_columns():
    model = build_model(ModelConfig(hidden=(40, 20)), seed=0)
    prune(model, PruneMethod("unit"), 0.75)
    small = compact(model)
    linears = [m for m in small if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 10), (10, 5), (5, 10)]


def test_cnn_channels_are_dropped_across_the_flatten():
    model = build_model(ModelConfig(name="lenet5"), seed=0)
    prune(model, PruneMethod("unit"), 0.5)
    small = compact(model)
    convs = [m for m in small if isinstance(m, nn.Conv2d)]
    fc1 = next(m for m in small if isinstance(m, nn.Linear))
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 3), (3, 8)]
    assert (fc1.in_features, fc1.out_features) == (8 * 5 * 5, 60)


def test_compaction_leaves_the_original_alone_and_a_dense_model_the_same_size():
    model = build_model(ModelConfig(hidden=(16,)), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = compact(model)
    assert parameter_count(small) == parameter_count(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_models_that_cannot_be_compacted_safely_are_refused():
    class NotSequential(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(CompactionError, match="nn.Sequential"):
        compact(NotSequential())
    with pytest.raises(CompactionError, match="BatchNorm1d"):
        compact(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    with pytest.raises(CompactionError, match="Sigmoid"):
        compact(nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)))


def test_weight_pruned_model_keeps_units_with_any_weight_left():
    model = build_model(ModelConfig(hidden=(32, 16)), seed=0)
    prune(model, PruneMethod("weight"), 0.5)
    small = compact(model)
    assert parameter_count(small) == parameter_count(model)
    assert len(prunable_layers(small)) == 2


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_finetuning_compacted_matches_finetuning_masked(tiny_data_dir, name):
    from prunelab.compact import compact_with_indices, expand_
    from prunelab.data import load_dataset
    from prunelab.train import TrainConfig, train

    ds = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100, train_limit=256)
    hidden = (48, 24) if name == "mlp" else None
    masked = build_model(ModelConfig(name=name, hidden=hidden), seed=0)
    masks = prune(masked, PruneMethod("unit"), 0.5)
    compacted_full = build_model(ModelConfig(name=name, hidden=hidden))
    compacted_full.load_state_dict(masked.state_dict())
    config = TrainConfig(epochs=2, batch_size=32, lr=1e-3)

    train(masked, ds.train, ds.val, config, seed=3, after_step=masks.holder(masked))
    small, kept = compact_with_indices(compacted_full)
    train(small, ds.train, ds.val, config, seed=3)
    expand_(compacted_full, small, kept)
    for key, value in masked.state_dict().items():
        torch.testing.assert_close(compacted_full.state_dict()[key], value, atol=1e-5, rtol=1e-4)
