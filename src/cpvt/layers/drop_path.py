"""Stochastic depth (Huang et al. 2016): drop a residual branch per sample."""

from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    """Zero the branch for a random subset of samples while training, rescaling the
    survivors by ``1 / (1 - p)`` so the expectation is unchanged."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
