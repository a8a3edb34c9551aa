"""``torch.compile`` as every cpvt command uses it: training, evaluation and prediction share this one call."""

from __future__ import annotations

import torch
from torch import nn


def compile_model(model: nn.Module, dynamic: bool | None = None, frozen: bool = False) -> nn.Module:
    """``torch.compile`` with the default mode. ``dynamic=True`` traces sizes symbolically, so evaluating
    at many resolutions compiles once (``benchmarks/throughput.py`` measures what it buys).

    ``frozen=True`` is for inference only (the weights must not change afterwards): inductor's freezing
    folds the parameters into the graph as constants, so it can fold constant work and pre-pack the weights
    for its matmul and convolution kernels."""
    return torch.compile(model, dynamic=dynamic, options={"freezing": True} if frozen else None)


def compiled_graphs() -> int:
    """How many graphs torch.compile has built in this process (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
