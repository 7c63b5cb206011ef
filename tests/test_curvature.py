import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from prunelab.prune.curvature import (
    empirical_fisher_diagonal,
    gauss_newton_diagonal,
    layer_input_hessian,
)


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.Tanh(), nn.Linear(4, 3)
    ).double()  # fmt: skip


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * 2 * 2, 3),
    ).double()  # fmt: skip


def tiny_cnn1d() -> nn.Module:
    """Padding, stride and dilation: its patches are a Conv2d's of height 1."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv1d(3, 2, 2, stride=2),
        nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3, 3),
    ).double()  # fmt: skip


def layers_of(model):
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}  # fmt: skip


def exact_gauss_newton_diagonal(model, x):
    """mean_n diag(J_n^T (diag(p_n) - p_n p_n^T) J_n) from per-sample Jacobians."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def logits(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(logits), in_dims=(None, 0))(params, x)  # name -> [N, C, *shape]
    p = model(x).softmax(1).detach()
    h_out = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # [N, C, C]
    diag = {}
    for name, j in jac.items():
        j = j.flatten(2)  # [N, C, P]
        diag[name] = torch.einsum("ncp,ncd,ndp->p", j, h_out, j).view_as(params[name]) / len(x)
    return diag


@pytest.mark.parametrize(
    "build, x",
    [
        (tiny_mlp, torch.randn(30, 5).double()),
        (tiny_cnn, torch.randn(20, 2, 6, 6).double()),
        (tiny_cnn1d, torch.randn(20, 2, 7).double()),
    ],
)
def test_gauss_newton_diagonal_matches_per_sample_jacobians(build, x):
    model = build()
    batches = [(x[:13], None), (x[13:], None)]
    ours = gauss_newton_diagonal(model, layers_of(model), batches)
    exact = exact_gauss_newton_diagonal(model, x)
    for layer, parts in ours.items():
        for key, value in parts.items():
            torch.testing.assert_close(value, exact[f"{layer}.{key}"], rtol=1e-4, atol=1e-12)


def test_empirical_fisher_is_the_mean_squared_per_sample_gradient():
    model = tiny_mlp()
    x, y = torch.randn(12, 5).double(), torch.randint(0, 3, (12,))
    ours = empirical_fisher_diagonal(model, layers_of(model), [(x, y)])
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad**2 / len(x)
    for layer, parts in ours.items():
        for key, value in parts.items():
            torch.testing.assert_close(value, expected[f"{layer}.{key}"])


def test_layer_input_hessian_is_twice_the_input_second_moment_plus_damping():
    model = tiny_mlp()
    x = torch.randn(10, 5).double()
    h = layer_input_hessian(model, model[0], [(x, None)], damping=0.0)
    torch.testing.assert_close(h, 2 * x.T @ x / 10)
    damped = layer_input_hessian(model, model[0], [(x, None)], damping=0.5)
    torch.testing.assert_close(damped - h, torch.eye(5).double() * 0.5 * h.diagonal().mean())


def test_curvature_without_data_is_a_clear_error():
    model = tiny_mlp()
    with pytest.raises(ValueError, match="calibration"):
        gauss_newton_diagonal(model, layers_of(model), [])
