"""Structured pruning of models that are not chains: coupled groups, masks that mean
removal, criteria on groups, compaction of any traced model, export of any model."""

import copy
import csv
import json

import pytest
import torch
from torch import nn

import prunelab
from prunelab.compact import parameter_count
from prunelab.export import load_sparse, save_sparse
from prunelab.metrics import flops
from prunelab.models import ModelConfig, build_model
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.curvature import gauss_newton_diagonal, parameter_diagonal
from prunelab.prune.groups import Graph
from tests.conftest import run


class HeadFirst(nn.Module):
    """A head defined before its body; a residual addition, a concatenation and a
    flatten into a Linear layer, with BatchNorm throughout."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(10 * 4 * 4, 3)
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(10, 10, 3, padding=1), nn.BatchNorm2d(10))
        self.norm = nn.BatchNorm2d(10)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = self.norm(torch.relu(y + self.mix(y)))
        return self.head(nn.functional.adaptive_avg_pool2d(y, 4).flatten(1))


def randomise_norms(model: nn.Module) -> nn.Module:
    """BatchNorm with non-trivial statistics and shifts, as after training: a removed
    channel that kept its shift would show."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.weight, 0.5, 1.5), (m.bias, -0.3, 0.3),
                              (m.running_mean, -0.2, 0.2), (m.running_var, 0.5, 1.5)):  # fmt: skip
                t.data = torch.empty_like(t).uniform_(lo, hi, generator=generator)
    return model.eval()


def models():
    torch.manual_seed(0)
    return {
        "resnet20": build_model(ModelConfig("resnet20")),
        "mobilenetv2": build_model(ModelConfig("mobilenetv2")),
        "head-first": HeadFirst(),
    }


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 28, 28, generator=generator)
    return x, torch.randint(0, 3, (32,), generator=generator)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "head-first"])
@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "obd"])
def test_unit_pruning_removes_whole_groups_and_compacts_exactly(name, criterion, data):
    model = randomise_norms(models()[name])
    x, y = data
    dense_params, dense_flops = parameter_count(model), flops(model, x[:1])
    masks = prunelab.prune(model, f"unit:{criterion}", 0.5, batches=[(x, y % 3)],
                           example_inputs=x[:2])  # fmt: skip
    # every removed channel is exactly zero after its normalization
    outputs = {}
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out))
             for n, m in norms.items()]  # fmt: skip
    with torch.no_grad():
        masked = model(x)
    for h in hooks:
        h.remove()
    removed_any = False
    for n in norms:
        gone = ~masks[f"{n}.weight"] if f"{n}.weight" in masks else torch.zeros(0, dtype=bool)
        removed_any |= bool(gone.any())
        assert (outputs[n][:, gone] == 0).all(), n
    assert removed_any
    # the compacted model computes what the masked one does, with what the masks keep
    small = prunelab.compact(model, example_inputs=x[:2])
    with torch.no_grad():
        out = small(x)
    assert out.shape == masked.shape and masked.abs().max() > 0
    assert (out - masked).abs().max() <= 1e-4 * masked.abs().max()
    state = model.state_dict()
    kept = sum(
        int(masks[n].sum()) if n in masks else p.numel() for n, p in model.named_parameters()
    )
    assert parameter_count(small) == kept < dense_params
    assert flops(small, x[:1]) < 0.6 * dense_flops
    small.load_state_dict(small.state_dict())  # loadable
    assert set(state) == set(model.state_dict())


def test_groups_follow_concatenation_offsets_and_flattened_blocks():
    """The residual addition makes the concatenation's ten channels one group with mix's
    outputs: a's channels are its units 0-3, b's 4-9, each 16 features after the flatten."""
    (group,) = Graph(HeadFirst(), torch.randn(2, 1, 8, 8)).groups()  # not the head: output
    units = {(s.tensor, s.dim): s.unit.tolist() for s in group.slices}
    assert group.size == 10
    assert units[("a.0.weight", 0)] == units[("a.1.running_var", 0)] == [0, 1, 2, 3]
    assert units[("b.0.weight", 0)] == units[("b.1.bias", 0)] == [4, 5, 6, 7, 8, 9]
    assert units[("mix.0.weight", 0)] == units[("mix.0.weight", 1)] == list(range(10))
    assert units[("norm.running_mean", 0)] == list(range(10))
    assert units[("head.weight", 1)] == [c for c in range(10) for _ in range(16)]
    assert ("head.weight", 0) not in units


def test_the_output_layer_is_found_from_the_trace_not_definition_order(data):
    model = HeadFirst()
    x, _ = data
    masks = prunelab.prune(model, "weight", 0.5, example_inputs=x[:2, :, :8, :8])
    assert "head.weight" not in masks and "mix.0.weight" in masks
    with pytest.raises(ValueError, match="give example_inputs"):
        prunelab.prune(HeadFirst(), "unit", 0.5)  # no guessing the head from definition order


def test_ignore_and_include_take_name_patterns(data):
    x = data[0][:2]
    masks = prunelab.prune(build_model(ModelConfig("resnet20")), "weight", 0.5,
                           example_inputs=x, ignore=["stages.*"])  # fmt: skip
    assert {n.split(".")[0] for n in masks} == {"stem"}
    masks = prunelab.prune(build_model(ModelConfig("resnet20")), "unit", 0.5,
                           example_inputs=x, include=["stages.8.*"])  # fmt: skip
    assert any(n.startswith("stages.8.body") for n in masks)
    assert not any(n.startswith(("stages.7.body.0", "stem")) for n in masks)


def test_layerwise_reconstruction_on_a_group_is_one_clear_error(data):
    x, y = data
    with pytest.raises(ValueError, match=r"one layer that reads a group's units; group "
                                         r"'stages.6.shortcut.0' is read by 3 layers"):  # fmt: skip
        prunelab.prune(build_model(ModelConfig("resnet20")), "unit:obs", 0.5, batches=[(x, y)])


def test_units_pruned_before_stay_pruned_and_masks_hold_statistics(data):
    x, y = data
    model = randomise_norms(build_model(ModelConfig("resnet20")))
    first = prunelab.prune(model, "unit", 0.3, example_inputs=x[:2])
    second = prunelab.prune(model, "unit:taylor", 0.6, batches=[(x, y)], pruned=first)
    for name, mask in first.items():
        assert (second[name] <= mask).all(), name
    model.train()
    hold = second.holder(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    model(x)  # updates the running statistics of every channel
    hold(model)
    state = model.state_dict()
    for name, mask in second.items():
        assert (state[name][~mask] == 0).all(), name


def test_the_curvature_of_every_parameter_matches_the_layer_hooks():
    """torch.func's per-sample gradients against the hook-based diagonal: two
    independent computations of the same Gauss-Newton diagonal."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(108, 5),
                          nn.Tanh(), nn.Linear(5, 4))  # fmt: skip
    batches = [(torch.randn(7, 1, 8, 8), torch.randint(0, 4, (7,))) for _ in range(2)]
    layers = {"0": model[0], "3": model[3], "5": model[5]}
    hooks = gauss_newton_diagonal(model, layers, batches)
    every = parameter_diagonal(model, batches, "gauss-newton")
    for layer, parts in hooks.items():
        for key, h in parts.items():
            torch.testing.assert_close(every[f"{layer}.{key}"], h, rtol=1e-4, atol=1e-9)


def test_any_models_state_dict_round_trips_sparse_into_an_instance(tmp_path, data):
    model = randomise_norms(build_model(ModelConfig("resnet20")))
    prunelab.prune(model, "unit", 0.5, example_inputs=data[0][:2])
    save_sparse(model, None, tmp_path / "r.safetensors")
    blank = build_model(ModelConfig("resnet20"))
    loaded, config = load_sparse(tmp_path / "r.safetensors", into=blank)
    assert config is None and loaded is blank
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with pytest.raises(prunelab.export.ExportError, match="pass into="):
        load_sparse(tmp_path / "r.safetensors")


def test_a_resnet20_study_runs_end_to_end(tiny_data_dir, tmp_path):
    out = tmp_path / "r20"
    result = run("study", "--model", "resnet20", "--data-dir", str(tiny_data_dir),
                 "--val-size", "100", "--epochs", "1", "--ks", "0.5", "--hidden", "4,8,8",
                 "--methods", "weight,unit,unit:obd", "--calibration", "32",
                 "--device", "cpu", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [r for r in json.loads((out / "answers.json").read_text())]
    assert {r["method"] for r in rows} == {"weight", "unit", "unit:obd"}
    assert (out / "report.html").exists()
    with open(out / "results.csv") as f:  # half of every group's channels, as pruned
        removed = {r["method"]: float(r["units_removed"]) for r in csv.DictReader(f)}
    assert removed["unit"] == removed["unit:obd"] == 0.5 and removed["weight"] < 0.5
    exported = run("export", str(out), "--method", "unit", "--k", "0.5", "--format", "onnx",
                   "-o", str(tmp_path / "r.onnx"), "--data-dir", str(tiny_data_dir))  # fmt: skip
    assert exported.returncode == 0, exported.stderr


def test_copies_are_left_alone(data):
    model = build_model(ModelConfig("mobilenetv2"))
    before = copy.deepcopy(model.state_dict())
    prunelab.compact(model, example_inputs=data[0][:2])
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def _members(group, unit: int, shapes) -> dict:
    """Bool per entry of each tensor: reached by ``unit`` along any dimension."""
    reached = {}
    for s in group.slices:
        view = [1] * len(shapes[s.tensor])
        view[s.dim] = -1
        hit = (s.unit == unit).view(view).expand(shapes[s.tensor])
        reached[s.tensor] = reached.get(s.tensor, torch.zeros_like(hit)) | hit
    return reached


def test_group_scores_sum_each_entry_a_unit_reaches_once(data):
    """Magnitude against the norm of the unit's entries, Taylor against the derivative of
    the loss with respect to a scale on them: computed from the entries, not the slices."""
    from prunelab.prune.group_criteria import GroupContext, group_magnitude, group_taylor

    model = randomise_norms(HeadFirst())
    x, y = data[0][:, :, :8, :8], data[1]
    (group,) = Graph(model, x[:2]).groups()
    context = GroupContext(model, [group], [(x, y)])
    magnitude, taylor = group_magnitude(context)[group.name], group_taylor(context)[group.name]
    params = dict(model.named_parameters())
    shapes = {n: t.shape for n, t in model.state_dict().items()}
    for unit in (0, 5, 9):
        reached = {n: m for n, m in _members(group, unit, shapes).items() if n in params}
        norm = sum(float((params[n].detach()[m] ** 2).sum()) for n, m in reached.items()) ** 0.5
        assert magnitude[unit] == pytest.approx(norm, rel=1e-6)
        scale = torch.ones((), requires_grad=True)
        scaled = {n: p * (1 + (scale - 1) * reached[n]) if n in reached else p
                  for n, p in params.items()}  # fmt: skip
        with prunelab.models.evaluating(model):
            logits = torch.func.functional_call(model, scaled, (x,))
        (derivative,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y), scale)
        assert taylor[unit] == pytest.approx(abs(float(derivative)), rel=1e-4, abs=1e-9)


class TinyEncoder(nn.Module):
    """Tokens [B, T, D] through a transformer encoder layer: its attention packs the heads'
    query, key and value rows in one tensor and calls the output projection functionally,
    and LayerNorm shares statistics across the residual stream."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.encoder = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "obd"])
def test_transformer_mlp_units_are_pruned_and_compacted_on_token_inputs(criterion):
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x, y = torch.randn(4, 5, 8), torch.randint(0, 3, (4,))
    groups = Graph(model, x).groups()  # the residual stream is left: LayerNorm counts it
    assert {(g.name, g.size) for g in groups} == {("encoder.linear1", 64), ("encoder.self_attn", 4)}
    masks = prunelab.prune(model, f"unit:{criterion}", 0.5, batches=[(x, y)], example_inputs=x)
    assert int((~masks["encoder.linear1.bias"]).sum()) == 32
    assert int((~masks["encoder.self_attn.out_proj.weight"][0]).sum()) == 2 * 8  # two heads
    small = prunelab.compact(model, example_inputs=x)
    assert small.encoder.linear1.out_features == 32 == small.encoder.linear2.in_features
    assert small.encoder.self_attn.num_heads == 2
    with torch.no_grad():
        masked, out = model(x), small(x)
    assert (out - masked).abs().max() <= 1e-4 * masked.abs().max()


def test_magnitude_units_match_torch_prunings_own_pruner(data):
    """An independent reference: Torch-Pruning's MagnitudePruner, with the squared L2
    norm summed over a group's members, physically removes the channels our masks zero;
    the two smaller networks agree. (Its members are weights and BatchNorm scales, ours
    every parameter entry, so the shifts are zero here for the sums to be equal; it scores
    depthwise convolutions otherwise, so the reference is ResNet-20.)"""
    import torch_pruning as tp

    torch.manual_seed(0)
    model = randomise_norms(build_model(ModelConfig("resnet20")))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.zeros_(module.bias)
    x = data[0][:8]
    theirs = copy.deepcopy(model)
    importance = tp.importance.MagnitudeImportance(p=2, group_reduction="sum", normalizer=None)
    tp.pruner.MagnitudePruner(theirs, x[:2], importance=importance, pruning_ratio=0.5,
                              ignored_layers=[theirs.head]).step()  # fmt: skip
    prunelab.prune(model, "unit", 0.5, example_inputs=x[:2])
    ours = prunelab.compact(model, example_inputs=x[:2])
    assert parameter_count(ours) == parameter_count(theirs)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


class TwoOutputs(nn.Module):
    """Logits and an auxiliary head, returned together; a grouped convolution inside."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c2 = nn.Conv2d(1, 8, 3, padding=1)
        self.fc, self.aux = nn.Linear(16, 10), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.cat([self.grouped(torch.relu(self.c1(x))), torch.relu(self.c2(x))], 1)
        h = h.mean((2, 3))
        return {"logits": self.fc(h), "aux": self.aux(h)}


def test_every_output_is_traced_and_grouped_convolutions_are_left_alone(data):
    model = TwoOutputs().eval()
    x, y = data[0][:8], data[1][:8]
    names = {g.name for g in Graph(model, x[:2]).groups()}
    assert names == {"c2"}  # fc and aux produce outputs; c1 and grouped meet a grouped conv
    prunelab.prune(model, "unit:taylor", 0.5, batches=[(x, y)], example_inputs=x[:2])
    small = prunelab.compact(model, example_inputs=x[:2])
    with torch.no_grad():
        masked, out = model(x), small(x)
    for key in masked:
        assert (out[key] - masked[key]).abs().max() <= 1e-4 * masked[key].abs().max()
    assert small.aux.in_features == 12


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x: prunelab.prune(m, "unit:taylor", 0.5, batches=[x]), "labels\\) pairs"),
        (lambda m, x: prunelab.prune(m, "unit", "0.5", example_inputs=x), "k must be a number"),
        (lambda m, x: prunelab.prune(m, "unit", 0.5, example_inputs=x, ignore=["stem*"]),
         "'stem\\*' matches no Linear or Conv layer"),
    ],
)  # fmt: skip
def test_bad_calls_are_one_clear_error(call, message, data):
    with pytest.raises(ValueError, match=message):
        call(HeadFirst(), data[0][:2, :, :8, :8])


@pytest.mark.parametrize("schedule", ["iterative", "gradual", "lottery"])
def test_every_schedule_reaches_k_in_whole_groups_on_resnet20(schedule, tiny_data_dir, tmp_path):
    out = tmp_path / schedule
    result = run("study", "--model", "resnet20", "--hidden", "4,8,8", "--data-dir",
                 str(tiny_data_dir), "--val-size", "100", "--epochs", "1", "--ks", "0.5",
                 "--methods", "unit:taylor", "--schedule", schedule, "--rounds", "2",
                 "--calibration", "32", "--device", "cpu", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    with open(out / "results.csv") as f:
        (final,) = [r for r in csv.DictReader(f) if r["phase"] == "finetuned"]
    assert float(final["units_removed"]) == pytest.approx(0.5, abs=0.01)


def test_layer_hooks_read_token_inputs_and_every_criterion_prunes_a_transformer():
    """Inputs [B, T, D]: the hooks' Gauss-Newton diagonal (one row per token) equals
    torch.func's, and every weight criterion runs on an encoder whose attention calls
    its output projection functionally (that projection is not a traced layer)."""
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    x, y = torch.randn(16, 5, 8), torch.randint(0, 3, (16,))
    layers = {n: model.get_submodule(n) for n in ("embed", "encoder.linear1", "encoder.linear2")}
    hooks = gauss_newton_diagonal(model, layers, [(x, y)])
    every = parameter_diagonal(model, [(x, y)], "gauss-newton")
    for layer, parts in hooks.items():
        for key, h in parts.items():
            torch.testing.assert_close(every[f"{layer}.{key}"], h, rtol=1e-4, atol=1e-9)
    for criterion in CRITERIA:
        masks = prunelab.prune(copy.deepcopy(model), f"weight:{criterion}", 0.5,
                               batches=[(x, y)], example_inputs=x[:2])  # fmt: skip
        assert set(masks) == {f"{n}.weight" for n in layers}, criterion


class Shift(nn.Module):
    """A per-channel parameter of shape [1, C, 1, 1] beside a convolution, and a layer
    whose output is both returned and read by the head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(1, 6, 1, 1))
        self.b = nn.Conv2d(6, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        features = self.b(torch.relu(self.a(x) + self.shift)).mean((2, 3))
        return self.head(features), features


def test_parameters_and_shared_outputs_are_grouped_as_they_are_used(data):
    model = Shift().train()
    x = data[0][:4, :, :6, :6]
    graph = Graph(model, x[:2])
    assert model.training  # tracing leaves the mode as it was
    assert set(graph.output_layers()) == {"head", "b"}  # b's output is returned too
    (group,) = graph.groups()
    units = {(s.tensor, s.dim): s.unit.tolist() for s in group.slices}
    assert units[("shift", 1)] == list(range(6))  # the channel dimension of [1, 6, 1, 1]
    model.eval()
    prunelab.prune(model, "unit:random", 0.5, example_inputs=x[:2], seed=2)
    small = prunelab.compact(model, example_inputs=x[:2])
    assert small.shift.shape == (1, 3, 1, 1)
    with torch.no_grad():
        for masked, out in zip(model(x), small(x), strict=True):
            assert (out - masked).abs().max() <= 1e-4 * masked.abs().max()


class MixesChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Conv2d(1, 6, 3, padding=1), nn.Linear(6, 3)

    def forward(self, x):
        y = self.a(x)
        y = y - y.mean(1, keepdim=True)  # a removed channel still counts in the mean
        return self.head(y.mean((2, 3)))


def test_compaction_that_would_change_the_outputs_is_refused(data):
    x = data[0][:4, :, :6, :6]
    model = MixesChannels().eval()
    prunelab.prune(model, "unit", 0.5, example_inputs=x[:2])
    with pytest.raises(prunelab.CompactionError, match="differs from the masked one"):
        prunelab.compact(model, example_inputs=x[:2])
    chain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    prunelab.prune(chain, "unit", 0.5)
    assert prunelab.compact(chain, example_inputs=torch.randn(2, 8))[0].out_features == 8


def test_find_budget_prunes_whole_groups_of_a_model_that_is_not_a_chain():
    from torch.utils.data import DataLoader, TensorDataset

    from prunelab.budget import find_budget
    from prunelab.train import TrainConfig

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 8, 8, generator=generator)
    loader = DataLoader(TensorDataset(x, (x.mean((1, 2, 3)) > 0).long()), batch_size=64)
    model = HeadFirst()
    result = find_budget(model, loader, loader, structure="unit", criterion="taylor",
                         max_drop=49.9, finetune=TrainConfig(epochs=1))  # fmt: skip
    pruned = result.model
    assert result.answer.k > 0 and pruned is not model
    removed = ~(pruned.a[1].weight != 0)  # BatchNorm scales of a's channels
    assert removed.any() and (pruned.a[1].bias[removed] == 0).all()
    assert (pruned.norm.running_var[:4][removed] == 0).all()  # the statistics too
