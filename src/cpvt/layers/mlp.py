"""The transformer feed-forward network: Linear -> activation -> Linear."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation CLIP and the official CvT use."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class Mlp(nn.Module):
    """Two-layer MLP with timm's key names (``fc1``, ``fc2``); ``act`` is ``"gelu"`` or ``"quick_gelu"``."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = make_activation(act)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor, hidden_hook: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        h = self.fc1(x)
        if hidden_hook is not None:  # ConvFFN: a depth-wise conv on the hidden tokens
            h = hidden_hook(h)
        return self.drop2(self.fc2(self.drop1(self.act(h))))
