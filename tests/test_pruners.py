"""Pruners: exact counts, largest |w| kept, deterministic ties, registry by name."""

from __future__ import annotations

import pytest
import torch

from conftest import gen
from spmm.pruning import available_pruners, get_pruner, magnitude_mask, register_pruner, row_scores, top_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_magnitude_24_keeps_two_largest(dtype):
    w = torch.randn(9, 20, generator=gen(20)).to(dtype)
    mask = magnitude_mask(w, "2:4")
    groups, kept = w.abs().reshape(9, 5, 4), mask.reshape(9, 5, 4)
    assert mask.dtype == torch.bool and bool((kept.sum(-1) == 2).all())
    smallest_kept = torch.where(kept, groups, torch.inf).amin(-1)
    largest_dropped = torch.where(kept, -torch.inf, groups).amax(-1)
    assert bool((smallest_kept >= largest_dropped).all())


def test_magnitude_ties_are_deterministic():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert magnitude_mask(w, "2:4").tolist() == [[True, True, False, False, True, True, False, False]]
    assert magnitude_mask(torch.ones(2, 3), 0.5).tolist() == [[False, False, False], [True, True, True]]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.95, 1.0, 1])
def test_magnitude_unstructured_exact_count(sparsity):
    w = torch.randn(13, 31, generator=gen(21))
    mask = magnitude_mask(w, sparsity)
    assert int((~mask).sum()) == round(sparsity * w.numel())
    if 0 < sparsity < 1:
        assert float(w.abs()[mask].min()) >= float(w.abs()[~mask].max())


@pytest.mark.parametrize(
    "weight, sparsity, match",
    [
        (torch.zeros(4, 6), "2:4", "weight.*multiple of 4"),
        (torch.zeros(4, 8), "3:2", "N <= M"),
        (torch.zeros(4, 8), "half", "sparsity"),
        (torch.zeros(4, 8), 1.5, "sparsity"),
        (torch.zeros(4, 8), -0.1, "sparsity"),
        (torch.zeros(8), 0.5, "weight.*2-D"),
    ],
)
def test_magnitude_bad_arguments(weight, sparsity, match):
    with pytest.raises(ValueError, match=match):
        magnitude_mask(weight, sparsity)


def test_registry():
    assert get_pruner("magnitude") is magnitude_mask
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        get_pruner("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_pruner("magnitude")(magnitude_mask)

    @register_pruner("test_keep_all")
    def keep_all(weight, sparsity, **kwargs):
        return torch.ones_like(weight, dtype=torch.bool)

    assert "test_keep_all" in available_pruners() and get_pruner("test_keep_all") is keep_all


def test_error_rows_without_calibration_lose_the_most_weight_energy():
    w = torch.tensor([[1.0, 1, 0, 0],   # drops 0
                      [3.0, 3, 2, 0],   # drops 4
                      [1.0, 1, 1, 1],   # drops 2 (ties: columns 2, 3 go)
                      [5.0, 0, 0, 0]])  # drops 0
    pruned = torch.where(magnitude_mask(w, "2:4"), w, 0)
    scores = row_scores("error", w, pruned)
    torch.testing.assert_close(scores, torch.tensor([0.0, 4, 2, 0]) / w.square().sum())  # a share of ||W||^2
    assert top_rows(scores, 2).tolist() == [1, 2] and top_rows(scores, 1).tolist() == [1]
    assert top_rows(scores, 0).tolist() == [] and top_rows(scores, 4).tolist() == [0, 1, 2, 3]
    # with another mask, the energy is what that mask drops
    other = torch.where(torch.tensor([[False, False, True, True]] * 4), w, 0)
    assert top_rows(row_scores("error", w, other), 1).tolist() == [3]
    # saliency without calibration ranks by the magnitude 2:4 mask's dropped energy too
    torch.testing.assert_close(row_scores("saliency", w, pruned), scores)
    with pytest.raises(ValueError, match="count"):
        top_rows(scores, 5)
