"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning by optimal brain surgery, layer by layer.

For one row w of W, the output error on the calibration inputs X is (w - w') H (w - w')^T / 2 with
H = 2 X^T X / n. Visiting the columns left to right, a weight that is dropped leaves an error e = w_i / d_i
(d_i: the diagonal of the upper Cholesky factor U of H^-1 at i), and the optimal compensation subtracts
e * U[i, i:] from the weights not yet visited. Masks are chosen on the fly from the OBS score w^2 / d^2, so they
see the updates of the columns before them. Updates are applied lazily: exactly within a block of columns, and to
the columns right of it once per block as one matrix product."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from .calibration import InputStats
from .registry import PruneResult, check_n_of_m, check_weight_2d, parse_sparsity, register_pruner, require_stats
from .select import keep_n_of_m, prune_lowest, split_count


def inverse_hessian_factor(hessian: Tensor, percdamp: float) -> Tensor:
    """Upper Cholesky factor U of (H + damp I)^-1 with damp = percdamp * mean(diag H). Inputs that were always
    zero get unit curvature, so the factorisation exists (their weights are then judged by size alone)."""
    h = hessian.clone()
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    diag += percdamp * diag.mean()
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info):
        raise ValueError(f"sparsegpt: the damped Hessian is not positive definite; raise percdamp (got {percdamp})")
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


@register_pruner("sparsegpt", needs="gram")
def sparsegpt_prune(weight: Tensor, sparsity: Union[str, float], stats: InputStats = None, blocksize: int = 128,
                    percdamp: float = 0.01, **_unused) -> PruneResult:
    """Prune `weight` [M, K] and update its kept weights to make up for the pruned ones (`stats`: the layer's input
    statistics with the Gram matrix). Computes in float32; returns the weight in its own dtype, zero where pruned.

    "N:M": the N best of every group of M along K by w^2 / d^2. A float: within each block of `blocksize` columns
    the lowest scores of the whole block go (SparseGPT's adaptive mask selection), the block's share of
    round(sparsity * numel) spread so that the matrix loses exactly round(sparsity * numel) weights.
    """
    check_weight_2d(weight)
    spec = parse_sparsity(sparsity)
    hessian = require_stats(stats, "sparsegpt", weight).hessian()
    if blocksize <= 0 or (isinstance(spec, tuple) and blocksize % spec[1]):
        raise ValueError(f"blocksize must be a positive multiple of M of N:M sparsity, got {blocksize}")
    if percdamp <= 0:
        raise ValueError(f"percdamp must be > 0, got {percdamp}")
    n_of_m = spec if isinstance(spec, tuple) else None
    k = weight.shape[1]
    if n_of_m:
        check_n_of_m(k, *n_of_m)
    w = weight.detach().to(device=hessian.device, dtype=torch.float32, copy=True)
    u = inverse_hessian_factor(hessian, percdamp)
    keep = torch.ones_like(w, dtype=torch.bool)
    num_pruned = 0 if n_of_m else round(spec * w.numel())

    for start in range(0, k, blocksize):
        end = min(start + blocksize, k)
        block, u_block = w[:, start:end], u[start:end, start:end]  # views: updates land in w
        d = u_block.diagonal()
        errors = torch.empty_like(block)
        if not n_of_m:
            keep[:, start:end] = prune_lowest(block.square() / d.square(), split_count(num_pruned, start, end, k))
        for i in range(end - start):
            col = start + i
            if n_of_m and i % n_of_m[1] == 0:  # choose the group's mask now, after the updates it has received
                m = n_of_m[1]
                keep[:, col:col + m] = keep_n_of_m(block[:, i:i + m].square() / d[i:i + m].square(), *n_of_m)
            kept = torch.where(keep[:, col], block[:, i], 0.0)
            errors[:, i] = (block[:, i] - kept) / d[i]
            block[:, i:] -= errors[:, i:i + 1] * u_block[i:i + 1, i:]  # OBS compensation within the block
            block[:, i] = kept  # exact zeros where pruned, whatever the rounding of the update
        w[:, end:] -= errors @ u[start:end, end:]  # the block's compensation for the columns right of it, at once
    return PruneResult(keep.to(weight.device), w.to(device=weight.device, dtype=weight.dtype))
