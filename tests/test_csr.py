"""The sparse inference form (``prunelab.csr``) and the inlined graph it runs as
(``prunelab.inline``) compute what the model they come from computes."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.csr import CSRLinear, csr_linear, to_csr
from prunelab.inline import inline_calls
from prunelab.models import ModelConfig, build_model
from prunelab.prune import PruneMethod, prune


def called(graph_module: nn.Module) -> list:
    """What each call in the traced graph calls: a function, or a module's type."""
    return [
        n.target if n.op == "call_function" else type(graph_module.get_submodule(n.target))
        for n in graph_module.graph.nodes
        if n.op in ("call_function", "call_module")
    ]


@pytest.mark.parametrize("batch", [1, 5])
def test_csr_form_computes_what_the_pruned_model_computes(batch):
    model = build_model(ModelConfig(hidden=(64, 32)), seed=0)
    prune(model, PruneMethod("weight"), 0.9)
    modules = to_csr(model, inline=False)
    kinds = [type(m) for m in modules if isinstance(m, (CSRLinear, nn.Linear))]
    assert kinds == [CSRLinear, CSRLinear, nn.Linear]  # the dense logits layer stays dense
    inlined = to_csr(model)
    assert called(inlined) == [torch.flatten, csr_linear, torch.relu, csr_linear, torch.relu,
                               F.linear]  # fmt: skip
    x = torch.rand(batch, 1, 28, 28)
    with torch.inference_mode():
        for sparse in (modules, inlined):
            torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 7), (6, 7), (3, 4, 7), (1, 1, 7), (0, 7)])
def test_csr_product_takes_rows_of_any_leading_shape_and_layout(shape):
    """One row (a vector product), many (an embedding bag), tokens, none, and rows
    stored transposed (as the embedding bag leaves them) or strided."""
    torch.manual_seed(0)
    layer = nn.Linear(7, 5)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < 0.3)
    sparse = CSRLinear(layer)
    x = torch.randn(shape)
    transposed = x.reshape(-1, 7).T.contiguous().T.reshape(shape)
    strided = torch.stack([x, x], dim=-1)[..., 0]
    with torch.inference_mode():
        for rows in (x, transposed, strided):
            torch.testing.assert_close(csr_linear(rows, *sparse.parts()), layer(x))


def test_csr_form_reads_tokens_and_leaves_fused_transformer_layers_dense():
    """A weight-pruned ViT: its encoder layers' fused kernel reads their Linear weights as
    dense tensors, so those stay dense; the CSR layer elsewhere reads [B, T, D] tokens."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.Linear(16, 16), nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand_like(p) < 0.2)
    modules = to_csr(model, inline=False)
    assert [type(m) for m in modules[:2]] == [CSRLinear, CSRLinear]
    assert type(modules[2].linear1) is nn.Linear
    inlined = to_csr(model)
    assert called(inlined) == [csr_linear, csr_linear, nn.TransformerEncoderLayer]
    x = torch.randn(3, 5, 8)
    with torch.inference_mode():
        for sparse in (modules, inlined):
            torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)


class HeadFirstResidual(nn.Module):
    """A head defined before its body, a skip connection, BatchNorm and dropout."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.body = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5))
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(12, 16))

    def forward(self, x):
        h = self.stem(x)
        return self.head(h + self.body(h))


def test_inlined_graph_calls_functions_and_keeps_the_modules_it_has_no_rule_for():
    torch.manual_seed(0)
    model = HeadFirstResidual()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.body[1].running_mean.uniform_(-1, 1)
        model.body[1].running_var.uniform_(0.5, 2)
    model.eval()
    inlined = inline_calls(model)
    # dropout is gone: the identity in inference
    expected = [
        torch.flatten,
        F.linear,
        F.linear,
        nn.BatchNorm1d,
        torch.relu,
        operator.add,
        F.linear,
    ]
    assert called(inlined) == expected
    assert not any(isinstance(m, (nn.Linear, nn.ReLU)) for m in inlined.modules())
    x = torch.randn(4, 3, 4)
    with torch.inference_mode():
        torch.testing.assert_close(inlined(x), model(x))


def test_a_model_that_cannot_be_traced_stays_as_it_is():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 4)

        def forward(self, x):
            return self.layer(x) if x.sum() > 0 else x

    model = DataDependent()
    assert inline_calls(model) is model
    assert isinstance(to_csr(model).layer, nn.Linear)  # dense: nothing was pruned


def test_a_saved_csr_graph_loads_and_computes_the_same(tmp_path):
    model = build_model(ModelConfig(hidden=(64, 32)), seed=0)
    prune(model, PruneMethod("weight"), 0.9)
    sparse = to_csr(model)
    torch.save(sparse, tmp_path / "sparse.pt")
    loaded = torch.load(tmp_path / "sparse.pt", weights_only=False)
    for batch in (1, 3):
        x = torch.rand(batch, 1, 28, 28)
        with torch.inference_mode():
            torch.testing.assert_close(loaded(x), sparse(x))


def test_inlining_keeps_in_place_activations_hooks_and_inference_mode():
    """An in-place ReLU whose input is read again, a hooked layer and a model left in
    training mode (its dropout off in the graph) compute what the model computes."""

    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.out = nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            h = self.fc(x)
            return self.out(self.drop(self.act(h) + h))

    torch.manual_seed(0)
    model = Reuse()
    model.out.register_forward_hook(lambda module, args, output: output * 0)
    inlined = inline_calls(model)
    assert called(inlined) == [F.linear, torch.relu_, operator.add, nn.Linear]
    x = torch.randn(5, 4)
    with torch.inference_mode():
        torch.testing.assert_close(inlined(x), model(x))


def test_a_model_that_tracing_would_change_stays_as_it_is():
    """Optional inputs (tracing fixes them), and, given an example, anything else whose
    traced graph computes something else (here a count kept in Python)."""

    class Optional(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 4)

        def forward(self, x, scale=None):
            return self.layer(x) if scale is None else scale * self.layer(x)

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.calls = nn.Linear(4, 4), 0

        def forward(self, x):
            self.calls += 1
            return self.layer(x) * self.calls

    optional, counting = Optional(), Counting()
    assert inline_calls(optional) is optional
    assert isinstance(inline_calls(Counting()), torch.fx.GraphModule)  # without an example
    assert inline_calls(counting, example=torch.randn(2, 4)) is counting


def test_sparse_products_pass_transposed_results_only_to_other_products():
    """Between sparse layers a result stays a transposed view (no copy); what the
    network returns, or reads otherwise, is contiguous, as nn.Linear's output is."""

    class Viewing(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8)

        def forward(self, x):  # x: [B, 5, 16]
            h = self.b(torch.relu(self.a(x)))
            return self.c(h).view(x.shape[0], -1)  # reads c's output's layout

    torch.manual_seed(0)
    model = Viewing().eval()
    with torch.no_grad():
        for layer in (model.a, model.b, model.c):
            layer.weight.mul_(torch.rand_like(layer.weight) < 0.3)
    sparse = to_csr(model)
    products = [n for n in sparse.graph.nodes if n.target is csr_linear]
    assert [n.kwargs.get("transposed", False) for n in products] == [True, True, False]
    x = torch.randn(7, 5, 16)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), model(x))
        assert CSRLinear(model.a)(torch.randn(6, 16)).is_contiguous()


def test_csr_form_leaves_dense_what_it_cannot_convert_faithfully():
    """Subclasses of nn.Linear (their forward may compute more), hooked layers and
    float16 ones stay dense; a layer called by keyword still works."""

    class Scaled(nn.Linear):
        def forward(self, input):
            return 2 * super().forward(input)

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = Scaled(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.c(input=self.b(self.a(x)))

    torch.manual_seed(0)
    model = Keyword()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand_like(p) < 0.3)
    model.b.register_forward_hook(lambda module, args, output: output.clamp(max=0.1))
    sparse = to_csr(model, inline=False)
    assert [type(m) for m in (sparse.a, sparse.b, sparse.c)] == [Scaled, nn.Linear, CSRLinear]
    x = torch.randn(5, 8)
    with torch.inference_mode():
        torch.testing.assert_close(to_csr(model)(x), model(x))
    half = to_csr(nn.Sequential(nn.Linear(8, 8)).half().eval(), inline=False)
    assert type(half[0]) is nn.Linear


def test_csr_form_refuses_clearly_what_it_cannot_take():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) < 0.2)
    model.train()
    sparse = to_csr(model, inline=False)
    assert not sparse.training and model.training  # an inference copy; the model as it was
    for shape in [(7, 10), (1, 10), (10,), (1, 1, 10)]:  # an embedding bag, a vector product
        with pytest.raises(ValueError, match="8 torch.float32 inputs was given 10"):
            sparse(torch.randn(shape))  # the bag would read the first 8 columns
    for max_density in (-1, 2.0, float("nan")):
        with pytest.raises(ValueError, match="max_density: a fraction of nonzero weights"):
            to_csr(model, max_density)
    with pytest.raises(TypeError, match="example: a tensor"):
        to_csr(model, example=(torch.randn(1, 8),))
    torch.nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"torch.nn.utils.prune.remove"):
        to_csr(model)


def test_an_example_the_model_cannot_run_is_refused_without_printing_a_traceback(capfd):
    """Where the model fails on the example, an error, not modules returned in silence;
    where only the graph fails, the modules, but no traceback fx prints (here a tensor
    whose shape a count kept in Python sets, fixed by tracing)."""

    class Growing(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.calls = nn.Linear(4, 3), 0

        def forward(self, x):
            self.calls += 1
            return self.layer(x) + torch.ones(self.calls)

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))  # dense first
    with torch.no_grad():
        model[2].weight.mul_(torch.rand_like(model[2].weight) < 0.2)
    error = r"example: does not run through the model \(RuntimeError: mat1 and mat2 shapes"
    with pytest.raises(ValueError, match=error):
        to_csr(model, example=torch.randn(2, 5))
    growing = Growing()
    assert inline_calls(growing, example=torch.randn(2, 4)) is growing
    assert capfd.readouterr().err == ""
