"""The transformer feed-forward network: Linear -> GELU -> Linear."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class Mlp(nn.Module):
    """Two-layer MLP with timm's key names (``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor, hidden_hook: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        h = self.fc1(x)
        if hidden_hook is not None:  # ConvFFN: a depth-wise conv on the hidden tokens
            h = hidden_hook(h)
        return self.drop2(self.fc2(self.drop1(self.act(h))))
