"""CvT's convolutional q/k/v projection: strided keys on the documented grid, and its guards."""

from __future__ import annotations

import pytest
import torch

from cpvt.models import create_model
from cpvt.pos.convproj import kv_grid


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (36, 44)])
def test_stride_two_keys_and_values_cover_the_grid_at_half_resolution(size):
    m = create_model("deit_micro_convproj").eval()
    h, w = size[0] // 4, size[1] // 4
    attn = m.blocks[2].attn
    attn.keep_attn = True
    m(torch.randn(1, 3, *size))
    kh, kw = kv_grid(h, w, 3, 2)
    assert (kh, kw) == ((h + 1) // 2, (w + 1) // 2)  # ceil(H/2) x ceil(W/2)
    assert attn.last_attn.shape == (1, 4, 1 + h * w, 1 + kh * kw)  # queries keep the grid, the class token rides along
    torch.testing.assert_close(attn.last_attn.sum(-1), torch.ones(1, 4, 1 + h * w), atol=1e-5, rtol=0)


def test_stride_one_keeps_every_key_and_combines_with_relative_bias():
    m = create_model("deit_micro_convproj", pos="convproj+rpe", convproj_kv_stride=1).eval()
    assert m(torch.randn(1, 3, 32, 40)).shape == (1, 10)
    strided = create_model("deit_micro_convproj", pos="convproj+rpe").eval()
    with pytest.raises(ValueError, match="strided keys"):
        strided(torch.randn(1, 3, 32, 32))


def test_conv_projection_is_depthwise_with_batchnorm_and_every_parameter_learns():
    m = create_model("deit_micro_convproj").train()
    k = m.conv_proj.k[0]
    assert k[0].groups == 128 and k[0].stride == (2, 2) and k[0].bias is None
    assert isinstance(k[1], torch.nn.BatchNorm2d)
    m(torch.randn(2, 3, 32, 48)).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert isinstance(m.conv_proj.q[-1], torch.nn.Identity)  # the class-token head never reads the last queries
    gap = create_model("deit_micro_convproj", global_pool="avg")
    assert not isinstance(gap.conv_proj.q[-1], torch.nn.Identity)
