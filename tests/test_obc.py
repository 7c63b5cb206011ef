"""Exact OBC against the paper's algorithm written plainly, and against the round-based
solver run one removal per round."""

from dataclasses import replace

import pytest
import torch

from prunelab.prune import PruneMethod, obc
from prunelab.prune.criteria import CRITERIA
from prunelab.prune.nm import NM
from prunelab.prune.obs import choose_units, obs_rows
from prunelab.study_config import StudyConfig


def problem(n=400, d=24, rows=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x @ (torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g,
                                                                  dtype=torch.float64))  # fmt: skip
    w = torch.randn(rows, d, generator=g, dtype=torch.float64)
    h = 2 * x.T @ x / n
    return w, h + 0.01 * h.diagonal().mean() * torch.eye(d, dtype=torch.float64)


def paper_obc(w, h, remove, pattern=None, group=None):
    """Algorithm 1 of Frantar and Alistarh (2022), one row at a time, in float64: remove
    the weight of least w_q^2 / [H^-1]_qq, update w and the full inverse, repeat.
    ``group``: each input's group of M (default: consecutive inputs)."""
    keep = torch.ones_like(w, dtype=torch.bool)
    if pattern is not None and group is None:
        group = torch.arange(w.shape[1]) // pattern.m
    for r in range(w.shape[0]):
        row, h_inv = w[r].clone(), torch.linalg.inv(h)
        for _ in range(remove):
            score = row**2 / h_inv.diagonal()
            score[~keep[r]] = float("inf")
            if pattern is not None:
                full = torch.bincount(group[keep[r]], minlength=w.shape[1] // pattern.m)
                score[full[group] <= pattern.n] = float("inf")
            q = int(score.argmin())
            row -= row[q] / h_inv[q, q] * h_inv[:, q]
            h_inv -= torch.outer(h_inv[:, q], h_inv[q, :]) / h_inv[q, q]
            keep[r, q] = False
    return keep


@pytest.mark.parametrize("block,compact", [(64, 0.75), (4, 0.75), (3, 0.0), (5, 1.0)])
def test_exact_obc_chooses_as_the_paper_does(monkeypatch, block, compact):
    """Whatever the block of gathered updates and however often the inverses shrink
    (compact 0.0: never before the end; 1.0: after every block)."""
    monkeypatch.setattr(obc, "BLOCK", block)
    monkeypatch.setattr(obc, "COMPACT", compact)
    w, h = problem()
    for remove in (1, 13, 23):
        keep = obc.greedy_keep(w, torch.linalg.inv(h), remove)
        assert torch.equal(keep, paper_obc(w, h, remove)), remove
        assert (keep.sum(1) == w.shape[1] - remove).all()


def test_exact_obc_in_row_chunks_chooses_the_same(monkeypatch):
    w, h = problem(rows=7)
    expected = obc.greedy_keep(w, torch.linalg.inv(h), 17)
    monkeypatch.setattr(obc, "MEMORY", 3 * 32 * 32 * 4)  # 3 rows at a time (24 inputs: 32 wide)
    assert torch.equal(obc.greedy_keep(w, torch.linalg.inv(h), 17), expected)


def test_exact_obc_equals_the_round_solver_at_one_removal_per_round():
    """An independent route to the same greedy: re-solve the kept weights exactly after
    each removal (``obs_rows`` with as many rounds as removals)."""
    w, h = problem(d=16, rows=4, seed=1)
    exact_w, exact_keep = obs_rows(w, h, 11, rounds=obc.ONE_AT_A_TIME)
    rounds_w, rounds_keep = obs_rows(w, h, 11, rounds=11)
    assert torch.equal(exact_keep, rounds_keep)
    torch.testing.assert_close(exact_w, rounds_w)


@pytest.mark.parametrize("pattern", [NM(2, 4), NM(1, 3), NM(3, 8)])
def test_exact_obc_keeps_n_of_every_m_as_the_paper_would(pattern):
    w, h = problem(d=24, seed=2)
    shape = torch.Size(w.shape)
    keep = obc.greedy_keep(w, torch.linalg.inv(h), 0, pattern, shape)
    groups = keep.view(w.shape[0], -1, pattern.m).sum(-1)
    assert (groups == pattern.n).all()
    assert torch.equal(keep, paper_obc(w, h, 24 // pattern.m * (pattern.m - pattern.n), pattern))


def problem_with_zero_inputs(zero=(0, 5, 6, 17, 23), loud=(), seed=6):
    """``problem``, with the inputs ``zero`` at zero on all the data (their rows of H^-1
    are zero off the diagonal), the weights ``loud`` of each row scaled 10x (their
    scores come late) and a few weights at zero (scores tied at 0)."""
    g = torch.Generator().manual_seed(seed)
    w, h = problem(rows=6, seed=seed)
    zero = torch.tensor(zero)
    h[zero] = 0
    h[:, zero] = 0
    h[zero, zero] = 0.01 * torch.rand(len(zero), generator=g, dtype=torch.float64) + 0.005
    w[:, list(loud)] *= 10
    w[torch.rand(w.shape, generator=g) < 0.1] = 0
    w[0, [0, 1, 2]] = 0  # tied at 0: the uncoupled 0 goes first, then 1 and 2
    w[1, [3, 5, 6]] = 0  # the coupled 3 first
    return w, h


@pytest.mark.parametrize("loud", [(), (5, 17, 23), (0, 5, 6, 17, 23)])
@pytest.mark.parametrize("block,compact", [(64, 0.75), (3, 1.0)])
def test_exact_obc_with_uncoupled_inputs_chooses_as_the_paper_does(monkeypatch, loud, block,
                                                                    compact):  # fmt: skip
    """Inputs at zero on all the data are set apart (the greedy runs on the others) and
    merged back by score: the same choices, whether they go first or last."""
    monkeypatch.setattr(obc, "BLOCK", block)
    monkeypatch.setattr(obc, "COMPACT", compact)
    w, h = problem_with_zero_inputs(loud=loud)
    h_inv = torch.linalg.inv(h)
    assert obc._uncoupled(h_inv).sum() == 5
    for remove in (0, 1, 2, 4, 9, 19, 21, 24):
        keep = obc.greedy_keep(w, h_inv, remove)
        assert torch.equal(keep, paper_obc(w, h, remove)), remove


def test_uncoupled_inputs_make_exact_obc_cheaper_not_different(monkeypatch):
    """Against the greedy over all inputs (no input set apart) on a problem where the
    uncoupled weights' scores fall among the others'."""
    w, h = problem_with_zero_inputs(loud=(5, 23), seed=7)
    h_inv = torch.linalg.inv(h)
    expected = {r: obc.greedy_keep(w, h_inv, r) for r in (7, 15, 22)}
    monkeypatch.setattr(obc, "_uncoupled", lambda h_inv: torch.zeros(len(h_inv), dtype=bool))
    for remove, keep in expected.items():
        assert torch.equal(keep, obc.greedy_keep(w, h_inv, remove)), remove


def test_exact_obc_of_inputs_all_uncoupled_is_the_paper_s():
    """One-hot inputs make H diagonal: nothing is left to the coupled greedy."""
    w, _ = problem(rows=4, seed=8)
    h = torch.diag(torch.rand(24, dtype=torch.float64) + 0.1)
    h_inv = torch.linalg.inv(h)
    assert obc._uncoupled(h_inv).all()
    for remove in (0, 5, 24):
        assert torch.equal(obc.greedy_keep(w, h_inv, remove), paper_obc(w, h, remove))
    h_inv[2, 2] = -h_inv[2, 2]
    with pytest.raises(torch.linalg.LinAlgError, match="pivot"):
        obc.greedy_keep(w, h_inv, 5)
    h_inv[2, 2] = -h_inv[2, 2]
    w[1, 3] = float("nan")  # as the greedy over all inputs says of it
    with pytest.raises(torch.linalg.LinAlgError, match="pivot"):
        obc.greedy_keep(w, h_inv, 5)


@pytest.mark.parametrize("size", [1, 3])
def test_exact_unit_obc_equals_the_inverse_recomputed_after_every_unit(size):
    """Downdating one shared inverse gives the units that recomputing (H_KK)^-1 from
    scratch after each removal gives."""
    w, h = problem(d=24, rows=6, seed=4)
    groups = [torch.arange(j * size, (j + 1) * size) for j in range(24 // size)]
    remove = len(groups) * 2 // 3
    exact = obc.greedy_units(w, h, groups, remove)
    assert exact == choose_units(w, h, groups, remove, rounds=remove)
    assert len(set(exact)) == remove


def test_stored_cells_of_the_round_based_obc_are_not_taken_for_exact_obc(monkeypatch):
    """0.1.0 to 0.2 ran 4 rounds under the name obc: its revision keeps their ids apart."""
    config, method = StudyConfig(), PruneMethod.parse("weight:obc")
    today = config.cell_id(method, 0.9)
    monkeypatch.setitem(CRITERIA, "obc", replace(CRITERIA["obc"], revision=0))
    assert config.cell_id(method, 0.9) != today


@pytest.mark.parametrize("block,compact", [(2, 0.75), (3, 1.0)])
def test_exact_obc_groups_a_convolution_along_its_input_channels(monkeypatch, block, compact):
    """A [out, in, kh, kw] weight keeps N of every M input channels at each kernel place."""
    monkeypatch.setattr(obc, "BLOCK", block)
    monkeypatch.setattr(obc, "COMPACT", compact)
    shape = torch.Size([5, 4, 3, 3])
    w, h = problem(d=36, rows=5, seed=5)
    pattern = NM(2, 4)
    keep = obc.greedy_keep(w, torch.linalg.inv(h), 0, pattern, shape)
    channel, place = torch.arange(36) // 9, torch.arange(36) % 9  # column = channel, kh, kw
    group = (place * 4 + channel) // 4
    assert (keep.view(5, 4, 9).sum(1) == 2).all()  # 2 of the 4 channels at each place
    assert torch.equal(keep, paper_obc(w, h, 18, pattern, group))


@pytest.mark.parametrize("remove", [0, 24])
def test_exact_obc_removes_nothing_or_everything(remove):
    w, h = problem()
    keep = obc.greedy_keep(w, torch.linalg.inv(h), remove)
    assert keep.all() if remove == 0 else not keep.any()


def test_exact_obc_refuses_an_inverse_with_a_pivot_at_or_below_zero():
    """What float32 makes of a Hessian too ill-conditioned for it: said, not a crash."""
    w, h = problem()
    h_inv = torch.linalg.inv(h)
    h_inv[3, 3] = -h_inv[3, 3]
    with pytest.raises(torch.linalg.LinAlgError, match="pivot"):
        obc.greedy_keep(w, h_inv, 20)
