import functools

import pytest
import torch

import cpvt

torch.set_num_threads(2)




@functools.cache
def _built(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return cpvt.create_model(name)


@pytest.fixture
def built():
    """Build a registry model once per session (tests must not keep state on it)."""
    return _built


def small_sizes(model) -> list[tuple[int, int]]:
    """Two square inputs and a non-square one, small enough to keep the suite fast."""
    p = model.patch_size
    return [(4 * p, 4 * p), (6 * p, 6 * p), (3 * p, 5 * p)]
