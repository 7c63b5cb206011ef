import pytest
import torch

from prunelab import csr_format


def test_rows_round_trip_including_gaps_over_255():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 1000, generator=g) * (torch.rand(5, 1000, generator=g) < 0.01)
    weight[2] = 0  # an empty row
    weight[3, 999] = 1.5  # a gap of 1000 columns from the row start
    values, gaps, counts = csr_format.encode(weight)
    assert gaps.dtype.name == "uint8"
    torch.testing.assert_close(csr_format.decode(values, gaps, counts, weight.shape), weight)


def test_rows_that_do_not_fit_their_shape_are_refused():
    weight = torch.eye(4)
    values, gaps, counts = csr_format.encode(weight)
    with pytest.raises(ValueError, match="do not fit together"):
        csr_format.decode(values[:-1], gaps, counts, weight.shape)
    with pytest.raises(ValueError, match="outside the weight's shape"):
        csr_format.decode(values, gaps, counts, [4, 3])
