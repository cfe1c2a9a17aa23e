"""Running statistics of a linear layer's inputs, the only thing calibrated pruners read. They are accumulated one
batch at a time, so memory stays at K (norms) or K x K (Gram) floats per layer however much data goes through."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class InputStats:
    """Statistics of the inputs X [n, K] a linear saw (every leading dim flattened into rows, so padding tokens
    count too): `count` = n, `sq_norms` [K] = sum over rows of x_j^2, and, with gram=True, `gram` [K, K] = X^T X.
    All in float32 on the device of the first batch."""

    def __init__(self, in_features: int, gram: bool = False):
        self.in_features = in_features
        self.want_gram = gram
        self.count = 0
        self.sq_norms: Optional[Tensor] = None
        self.gram: Optional[Tensor] = None

    def add(self, x: Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: last dim must be in_features={self.in_features}, got shape {tuple(x.shape)}")
        rows = x.detach().reshape(-1, self.in_features).float()
        if self.sq_norms is None:
            self.sq_norms = torch.zeros(self.in_features, device=rows.device)
            if self.want_gram:
                self.gram = torch.zeros(self.in_features, self.in_features, device=rows.device)
        self.sq_norms += rows.square().sum(0)
        if self.gram is not None:
            self.gram.addmm_(rows.T, rows)
        self.count += rows.shape[0]

    @classmethod
    def of(cls, x: Tensor, gram: bool = True) -> "InputStats":
        """The statistics of one tensor of inputs [..., K]."""
        stats = cls(x.shape[-1], gram)
        stats.add(x)
        return stats

    def _check_seen(self) -> None:
        if self.count == 0:
            raise ValueError("stats: no inputs were seen (the layer was never called on the calibration data)")
        if not bool(torch.isfinite(self.sq_norms).all()):
            raise ValueError("stats: the calibration inputs of this layer hold NaN or Inf (or values too large "
                             "to square in float32); check the calibration data and the layers before this one")

    def col_norms(self) -> Tensor:
        """||X_j||_2 per input column [K]."""
        self._check_seen()
        return self.sq_norms.sqrt()

    def hessian(self) -> Tensor:
        """H = 2 X^T X / n, the Hessian of the mean squared output error of the layer w.r.t. one weight row."""
        self._check_seen()
        if self.gram is None:
            raise ValueError("stats: the Gram matrix was not collected (build InputStats with gram=True)")
        return self.gram * (2.0 / self.count)

    def output_error(self, delta: Tensor) -> Tensor:
        """Per output row r, sum over the inputs x of (delta_r . x)^2: how much replacing W by W - delta changes
        that output on the calibration data. Exact with the Gram matrix; without it, cross terms are dropped
        (the column-norm estimate Wanda's score is built on)."""
        self._check_seen()
        delta = delta.float()
        if self.gram is not None:
            return ((delta @ self.gram) * delta).sum(1)
        return (delta.square() * self.sq_norms).sum(1)
