import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models import ModelConfig, build_model, prunable_layers
from prunelab.prune import PruneMethod, prune
from prunelab.prune.allocate import global_, layerwise
from prunelab.prune.criteria import CRITERIA, NeedsCalibrationError, ScoreContext


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def deletion_effects(model, layers, scores, loss, count=200):
    """Predicted (the scores) and measured loss increases of deleting each of the
    ``count`` lowest-scoring weights alone."""
    flat = sorted((s, n, i) for n, t in scores.items() for i, s in enumerate(t.flatten().tolist()))
    base = loss(model).item()
    predicted, measured = [], []
    with torch.no_grad():
        for saliency, name, i in flat[:count]:
            w = layers[name].weight.view(-1)
            kept = w[i].item()
            w[i] = 0.0
            measured.append(loss(model).item() - base)
            w[i] = kept
            predicted.append(saliency)
    return torch.tensor(predicted), torch.tensor(measured)


def test_obd_predicts_the_loss_increase_of_deleting_low_saliency_weights():
    """At a minimum, s = h w^2 / 2 ranks the true loss increases; |w| does not.

    The minimum is exact by construction, so no optimizer has to reach it: with soft
    targets equal to the network's own softmax outputs, the cross-entropy's gradient
    with respect to the logits, p - target, is zero on every sample. There the
    Gauss-Newton matrix that OBD uses is the exact Hessian (its missing term is
    weighted by that zero gradient), and it does not depend on the labels.
    """
    g = torch.Generator().manual_seed(0)
    scale = torch.logspace(-1, 0.5, 8, dtype=torch.float64)  # inputs of unequal scale
    x = torch.randn(2000, 8, generator=g, dtype=torch.float64) * scale
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 24), nn.Softplus(), nn.Linear(24, 3)).double()
    with torch.no_grad():
        model[2].weight.mul_(4)  # confident outputs: a curved loss
        target = F.softmax(model(x), dim=1)
    loss = lambda m: F.cross_entropy(m(x), target)  # noqa: E731
    model.zero_grad()
    loss(model).backward()
    gradient = max(float(p.grad.abs().max()) for p in model.parameters())
    assert gradient < 1e-12  # zero up to rounding: an exact minimum

    layers = prunable_layers(model, include_last=True)  # 264 weights
    labels = torch.randint(0, 3, (len(x),), generator=g)  # OBD must not depend on them
    ctx = ScoreContext(model, layers, "weight", [(x, labels)])
    predicted, measured = deletion_effects(model, layers, CRITERIA["obd"](ctx), loss)
    by_magnitude = deletion_effects(model, layers, CRITERIA["magnitude"](ctx), loss)
    obd, magnitude = spearman(predicted, measured), spearman(*by_magnitude)
    assert obd >= 0.9
    assert obd > magnitude + 0.3
    # one weight's deletion changes the loss by h w^2 / 2 up to third-order terms
    assert float(((predicted - measured).abs() / measured).median()) < 0.05


def small_model():
    return build_model(ModelConfig(hidden=(24, 12)), seed=0)


def calibration(n=64):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))]


def test_lamp_divides_by_the_sum_of_squares_of_no_smaller_weights():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, -1.0, 2.0, 0.5]]))
    ctx = ScoreContext(nn.Sequential(layer), {"0": layer}, "weight")
    expected = torch.tensor([[9 / 9, 1 / (1 + 4 + 9), 4 / (4 + 9), 0.25 / 14.25]])
    torch.testing.assert_close(CRITERIA["lamp"](ctx)["0"], expected)


def test_lamp_gives_equal_weights_one_score():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 2.0, 1.0]]))
    scores = CRITERIA["lamp"](ScoreContext(nn.Sequential(layer), {"0": layer}, "weight"))["0"]
    torch.testing.assert_close(scores, torch.tensor([[1 / 7, 1 / 7, 1.0, 1 / 7]]))


def test_random_scores_follow_the_seed():
    model = small_model()
    layers = prunable_layers(model)
    a = CRITERIA["random"](ScoreContext(model, layers, "weight", seed=3))
    b = CRITERIA["random"](ScoreContext(model, layers, "weight", seed=3))
    c = CRITERIA["random"](ScoreContext(model, layers, "weight", seed=4))
    assert all(torch.equal(a[n], b[n]) for n in a) and not torch.equal(a["1"], c["1"])


def test_taylor_is_the_absolute_first_order_term():
    model = small_model()
    layers = prunable_layers(model)
    (x, y), = calibration()  # fmt: skip
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    scores = CRITERIA["taylor"](ScoreContext(model, layers, "weight", [(x, y)]))
    for name, layer in layers.items():
        torch.testing.assert_close(scores[name], (layer.weight * layer.weight.grad).abs())
    units = CRITERIA["taylor"](ScoreContext(model, layers, "unit", [(x, y)]))
    layer = layers["1"]
    expected = ((layer.weight * layer.weight.grad).sum(1) + layer.bias * layer.bias.grad).abs()
    torch.testing.assert_close(units["1"], expected)


@pytest.mark.parametrize("criterion", ["obd", "fisher", "taylor", "obs", "obc"])
def test_criteria_that_need_data_refuse_to_run_without_it(criterion):
    with pytest.raises((NeedsCalibrationError, ValueError), match="calibration"):
        prune(small_model(), PruneMethod("weight", criterion), 0.5)


def test_global_allocation_hits_the_total_exactly_with_an_uneven_split():
    scores = {"a": torch.arange(100.0), "b": torch.arange(10.0) * 100, "c": torch.zeros(30)}
    keep = global_(scores, 0.5)
    assert sum(int((~k).sum()) for k in keep.values()) == round(0.5 * 140)
    assert int((~keep["c"]).sum()) == 29  # all but its protected best entry
    assert int((~keep["b"]).sum()) == 1  # only its zero score goes
    assert int((~keep["a"]).sum()) == 70 - 29 - 1


def test_global_allocation_never_empties_a_layer():
    scores = {"big": torch.ones(1000), "small": torch.zeros(5)}
    keep = global_(scores, 0.9)
    assert int(keep["small"].sum()) == 1
    assert sum(int((~k).sum()) for k in keep.values()) == 904


@pytest.mark.parametrize("criterion", list(CRITERIA))
@pytest.mark.parametrize("structure", ["weight", "unit"])
def test_every_criterion_prunes_exact_counts_on_the_cnn(criterion, structure):
    model = build_model(ModelConfig(name="lenet5"), seed=0)
    masks = prune(model, PruneMethod(structure, criterion), 0.5, batches=calibration(32))
    for name, layer in prunable_layers(model).items():
        if structure == "weight":
            per_row = layer.weight.flatten(1).shape[1]
            zeros = int((layer.weight == 0).sum())
            if CRITERIA[criterion].solver_rounds is not None:  # each row loses round(k * fan_in)
                assert zeros == layer.weight.shape[0] * round(0.5 * per_row)
            else:
                assert zeros == round(0.5 * layer.weight.numel())
        else:
            dead = (layer.weight.flatten(1) == 0).all(1) & (layer.bias == 0)
            assert int(dead.sum()) == round(0.5 * layer.weight.shape[0])
            assert torch.equal(~dead, masks[f"{name}.bias"])


def test_layerwise_and_global_scores_agree_for_a_single_layer():
    scores = {"only": torch.randn(50)}
    assert torch.equal(layerwise(scores, 0.3)["only"], global_(scores, 0.3)["only"])


def test_obs_and_obc_refuse_global_scope():
    with pytest.raises(ValueError, match="scope 'layer'"):
        PruneMethod("weight", "obs", "global")
