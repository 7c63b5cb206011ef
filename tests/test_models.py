import pytest
import torch
from torch import nn

from prunelab.models import ModelConfig, NothingToPruneError, build_model, prunable_layers


def test_default_model_is_the_seed_mlp():
    model = build_model(ModelConfig())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 1000), (1000, 1000), (1000, 500), (500, 200), (200, 10),
    ]  # fmt: skip
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_dropout_is_optional_per_layer():
    model = build_model(ModelConfig(hidden=(8, 4), dropout=(0.25, 0.4)))
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.4]


def test_bad_model_configs_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        ModelConfig(name="resnet")
    with pytest.raises(ValueError, match="one dropout rate per hidden layer"):
        ModelConfig(hidden=(8, 4), dropout=(0.1,))


def test_logits_layer_is_left_out_unless_asked():
    model = build_model(ModelConfig(hidden=(8, 4)))
    assert list(prunable_layers(model)) == ["1", "3"]
    assert list(prunable_layers(model, include_last=True)) == ["1", "3", "5"]


def test_any_module_with_linear_and_conv_layers_is_prunable():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    assert [type(m) for m in prunable_layers(model).values()] == [nn.Conv2d]


def test_model_with_nothing_prunable_is_a_clear_error():
    with pytest.raises(NothingToPruneError, match="besides its output layer"):
        prunable_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(NothingToPruneError):
        prunable_layers(nn.Sequential(nn.ReLU()), include_last=True)


def test_seeded_build_gives_the_same_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ModelConfig(hidden=(8,)), seed=5)
    assert torch.rand(1) == expected_next
    b = build_model(ModelConfig(hidden=(8,)), seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_caffes_lenet_has_the_size_han_et_al_prune():
    """Deep Compression's LeNet-5: 431K parameters, 1,720 KB in float32."""
    model = build_model(ModelConfig("lenet5-caffe"))
    assert sum(p.numel() for p in model.parameters()) == 431_080
    assert [type(m).__name__ for m in model] == ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d",
                                                 "Flatten", "Linear", "ReLU", "Linear"]  # fmt: skip
    assert build_model(ModelConfig("lenet5-caffe").for_data((3, 32, 32), 100))(
        torch.zeros(2, 3, 32, 32)
    ).shape == (2, 100)
