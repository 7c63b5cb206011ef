"""N:M sparsity (``weight:CRITERION@2:4``) and the Wanda criterion: exact counts in every
group, Wanda's scores against their definition, and on a trained network Wanda and OBS
at 2:4 keeping more of it than magnitude does."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab import PruneMethod, nm_format, prune
from prunelab.data import load_dataset
from prunelab.export import ExportError, load_sparse, save_sparse
from prunelab.models import ModelConfig, build_model
from prunelab.prune.criteria import ScoreContext, wanda
from prunelab.prune.nm import NM
from prunelab.report import write_report
from prunelab.schedules import Schedule
from prunelab.study import run_study
from prunelab.study_config import RunOptions, StudyConfig
from prunelab.train import TrainConfig, train


def groups_of(weight: torch.Tensor, m: int) -> torch.Tensor:
    """Groups as sparse tensor cores read them: a convolution's input channels at each
    kernel position ([out, kh, kw, in]), a linear layer's inputs."""
    if weight.dim() > 2:
        weight = weight.movedim(1, -1)
    return weight.reshape(weight.shape[0], -1, m)


def small_convnet() -> nn.Module:
    """8 input channels, 8 input channels, 576 inputs: every M of the tests divides them."""
    return nn.Sequential(nn.Conv2d(8, 8, 2), nn.ReLU(), nn.Conv2d(8, 16, 2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 36, 16), nn.ReLU(),
                         nn.Linear(16, 3))  # fmt: skip


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "obs", "obc", "taylor"])
@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_every_group_of_m_keeps_exactly_n_weights(criterion, n, m):
    torch.manual_seed(0)
    model = small_convnet()
    x, y = torch.randn(64, 8, 8, 8), torch.randint(0, 3, (64,))
    masks = prune(model, f"weight:{criterion}@{n}:{m}", 1 - n / m, batches=[(x, y)])
    for name in ("0", "2", "5"):  # the logits layer, 7, stays dense
        weight = model.get_submodule(name).weight
        assert ((groups_of(weight, m) != 0).sum(-1) == n).all(), (name, criterion)
        assert torch.equal(masks[f"{name}.weight"], weight != 0)
    assert (model[7].weight != 0).all()


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "obs", "obc"])
def test_a_1d_convolution_keeps_n_of_every_m_input_channels_at_each_kernel_place(criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 3),
                          nn.Flatten(), nn.Linear(8 * 14, 3))  # fmt: skip
    x, y = torch.randn(32, 4, 16), torch.randint(0, 3, (32,))
    prune(model, f"weight:{criterion}@2:4", 0.5, batches=[(x, y)])
    for layer in (model[0], model[2]):
        assert ((groups_of(layer.weight, 4) != 0).sum(-1) == 2).all(), criterion


def test_a_layer_that_m_does_not_divide_is_named_with_the_way_out():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 16),
                          nn.ReLU(), nn.Linear(16, 3))  # fmt: skip
    with pytest.raises(ValueError, match=r"layer '0' has 1 input channels.*--ignore 0"):
        prune(model, "weight@2:4", 0.5)
    prune(model, "weight@2:4", 0.5, ignore=["0"])  # the way out works


def test_wanda_scores_are_magnitude_times_the_norm_of_each_input():
    torch.manual_seed(1)
    model = small_convnet()
    x = torch.randn(10, 8, 8, 8)
    layers = {"0": model[0], "5": model[5]}
    scores = wanda(ScoreContext(model, layers, "weight", [(x[:6], None), (x[6:], None)]))
    patches = F.unfold(x, 2).transpose(1, 2).reshape(-1, 32)  # conv 0's inputs, row by row
    expected = model[0].weight.abs().flatten(1) * patches.norm(dim=0)
    torch.testing.assert_close(scores["0"].flatten(1), expected)
    features = model[:5](x)
    torch.testing.assert_close(scores["5"], model[5].weight.abs() * features.norm(dim=0))


def test_n_m_mistakes_are_clear_errors():
    with pytest.raises(ValueError, match="pattern of single weights: use weight:wanda@2:4"):
        PruneMethod.parse("unit:wanda@2:4")
    with pytest.raises(ValueError, match="0 < N < M"):
        PruneMethod.parse("weight@4:2")
    with pytest.raises(ValueError, match="unknown scope 'row'; choose from layer, global, N:M"):
        PruneMethod.parse("weight@row")
    model = small_convnet()
    with pytest.raises(
        ValueError, match="2:4 removes exactly 0.5 of the weights, one-shot; give k = 0.5"
    ):
        prune(model, "weight@2:4", 0.7)
    with pytest.raises(ValueError, match="layer '0' has 1 input channels, not a multiple of 4"):
        prune(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 2)),
              "weight@2:4", 0.5)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_data_dir):
    data = load_dataset("mnist", data_dir=tiny_data_dir, val_size=100)
    model = build_model(ModelConfig(hidden=(64, 32)), seed=0)
    train(model, data.train, data.val, TrainConfig(epochs=6, batch_size=32), seed=0)
    return model, data


def test_wanda_and_obs_at_2_4_keep_more_of_a_trained_network_than_magnitude(trained):
    """Measured by the loss on the training images (finer than accuracy on 200)."""
    model, data = trained
    calibration = data.train.sample(256, seed=0)
    losses = {}
    for criterion in ("magnitude", "wanda", "obs"):
        pruned = copy.deepcopy(model)
        prune(pruned, f"weight:{criterion}@2:4", 0.5, batches=calibration)
        with torch.no_grad():
            losses[criterion] = F.cross_entropy(pruned(data.train.x), data.train.y).item()
    print("loss at 2:4:", {name: round(loss, 3) for name, loss in losses.items()})
    assert losses["wanda"] < losses["magnitude"] and losses["obs"] < losses["magnitude"], losses


def test_a_study_of_2_4_methods_reports_them(tiny_data_dir, tmp_path):
    config = StudyConfig(val_size=100, train=TrainConfig(epochs=1), ks=(0.5,),
                         methods=("weight:wanda@2:4", "weight:obs@2:4"))  # fmt: skip
    result = run_study(config, RunOptions(out=tmp_path, data_dir=tiny_data_dir, device="cpu"))
    assert {row["sparsity"] for row in result.results} == {0.5}
    write_report(tmp_path)
    assert "2 of every 4 consecutive weights" in (tmp_path / "report.md").read_text()


def test_a_study_with_a_layer_that_m_does_not_divide_is_refused_before_training(
    tiny_data_dir, tmp_path
):
    config = StudyConfig(model=ModelConfig("lenet5"), val_size=100, ks=(0.5,),
                         train=TrainConfig(epochs=1), methods=("weight@2:4",))  # fmt: skip
    with pytest.raises(ValueError, match=r"1 input channels, not a multiple of 4.*--ignore"):
        run_study(config, RunOptions(out=tmp_path, data_dir=tiny_data_dir, device="cpu"))
    assert not list(tmp_path.rglob("*.safetensors"))  # nothing was trained


@pytest.mark.parametrize("n, m", [(2, 4), (3, 5), (4, 8)])
def test_n_m_weights_export_compressed_and_load_back_exactly(tmp_path, n, m):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    prune(model, f"weight@{n}:{m}", 1 - n / m)
    with torch.no_grad():
        model[0].weight[0, :m] = 0  # a group with fewer than N: padded with zeros
    pattern = NM(n, m)
    size = save_sparse(model, None, tmp_path / "nm.st", pattern=pattern)
    loaded, _ = load_sparse(tmp_path / "nm.st", into=copy.deepcopy(model).apply(_scrambled))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert size < save_sparse(model, None, tmp_path / "csr.st")  # smaller than CSR
    values, places = nm_format.encode(model[0].weight, pattern)
    assert values.shape == (30, 40 // m, n)
    assert places.numel() == math.ceil(values.numel() * nm_format.bits_for(pattern) / 8)
    assert nm_format.encode(model[2].weight, pattern) is None  # the dense logits layer: CSR
    if m == 5:  # 3 bits can name places 5 to 7, outside a group of 5
        with pytest.raises(ValueError, match="outside its group"):
            nm_format.decode(values, torch.full_like(places, 255), [30, 40], pattern)


def _scrambled(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        with torch.no_grad():
            module.weight.normal_()


def test_pattern_mistakes_of_a_study_or_a_schedule_are_said_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"weight:wanda@2:4 prunes 2:4 one-shot, at k = 0.5 only"):
        StudyConfig(methods=("weight:wanda@2:4",), ks=(0.5, 0.9))
    with pytest.raises(ValueError, match="give --ks 0.5 and the oneshot schedule"):
        StudyConfig(methods=("weight@2:4",), ks=(0.5,), schedule=Schedule("iterative"))
    StudyConfig(methods=("weight@1:3",), ks=(0.667,))  # to within half a weight of a group
    with pytest.raises(ValueError, match="0 < N < M <= 256"):
        PruneMethod.parse("weight@2:512")
    model = small_convnet()
    earlier = prune(model, "weight", 0.3)
    with pytest.raises(ValueError, match="2:4 pruning is one-shot: it cannot start from earlier"):
        prune(model, "weight@2:4", 0.5, pruned=earlier)
    grouped = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8 * 36, 2))
    with pytest.raises(ValueError, match=r"layer '0' \(8 groups.* leave it out \(--ignore 0"):
        prune(grouped, "weight:wanda", 0.5, batches=[(torch.randn(4, 8, 8, 8), None)])


def test_a_file_with_broken_n_m_metadata_is_refused_not_a_traceback(tmp_path):
    from safetensors.torch import load, save

    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    prune(model, "weight@2:4", 0.5)
    save_sparse(model, None, tmp_path / "nm.st", pattern=NM(2, 4))
    blob = (tmp_path / "nm.st").read_bytes()
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    for broken in ("[1, 2]", '{"0.weight": [[4, 8], 2]}', '{"0.weight": [[4, 8], 2, 0]}', "{"):
        (tmp_path / "bad.st").write_bytes(save(load(blob), metadata={**header, "nm": broken}))
        with pytest.raises(ExportError, match="N:M weights cannot be read"):
            load_sparse(tmp_path / "bad.st", into=copy.deepcopy(model))
