"""ConvFFN (PVTv2) and RepCPE (FastViT): their defining properties."""

from __future__ import annotations

import pytest
import torch

from cpvt.models import create_model


def test_repcpe_fused_equals_unfused():
    torch.manual_seed(0)
    model = create_model("cpvt_micro_repcpe", repcpe_positions=(-1, 2)).eval()
    with torch.no_grad():  # move away from the init so that the kernel matters
        for p in model.rep_cpe.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    xs = [torch.randn(2, 3, 32, 32), torch.randn(1, 3, 48, 64)]
    before = [model(x) for x in xs]
    unfused_state = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.reparameterize() is model
    assert model.rep_cpe.fused
    for x, ref in zip(xs, before):
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    keys = list(model.state_dict())
    assert "rep_cpe.0.reparam_conv.weight" in keys and not any(".pe." in k for k in keys)
    assert "rep_cpe.0.pe.weight" in unfused_state
    model.reparameterize()  # idempotent
    torch.testing.assert_close(model(xs[0]), before[0], atol=1e-5, rtol=1e-5)
    # a fresh (unfused) model loads the training-time weights and fuses to the same function
    fresh = create_model("cpvt_micro_repcpe", repcpe_positions=(-1, 2)).eval()
    fresh.load_state_dict(unfused_state)
    torch.testing.assert_close(fresh.reparameterize()(xs[1]), before[1], atol=1e-5, rtol=1e-5)


def test_repcpe_is_a_7x7_depthwise_conv_by_default():
    m = create_model("cpvt_micro_repcpe")
    conv = m.rep_cpe.get_submodule("0").pe
    assert conv.kernel_size == (7, 7) and conv.groups == 128
    with pytest.raises(ValueError, match="repcpe_kernel_size"):
        create_model("cpvt_micro_repcpe", repcpe_kernel_size=4)


def test_convffn_adds_a_depthwise_conv_to_every_mlp_and_carries_border_position():
    torch.manual_seed(0)
    nope, conv = create_model("deit_micro_nope").eval(), create_model("deit_micro_convffn").eval()
    hidden = 4 * 128
    # every block but the last (its patch tokens never reach the class-token head)
    assert sorted(conv.conv_ffn.convs) == [str(i) for i in range(7)]
    assert sum(p.numel() for p in conv.parameters()) - sum(p.numel() for p in nope.parameters()) == 7 * hidden * 10
    gap = create_model("deit_micro_convffn", global_pool="avg")
    assert sorted(gap.conv_ffn.convs) == [str(i) for i in range(8)]
    assert not any(n.startswith("conv_ffn") for n in conv.no_weight_decay())  # decayed like the MLP (PVTv2)
    x = torch.full((1, 3, 32, 32), 0.3)  # a constant image: only the padding can tell tokens apart
    for model, varies in [(nope, False), (conv, True)]:
        tokens = model.forward_features(x)[0, 1:]
        spread = (tokens - tokens[27]).abs().max().item()  # against an interior token
        assert (spread > 1e-3) == varies
    # with one ConvFFN (block 0) only the border ring sees padding; the interior stays identical through
    # the later blocks, because attention among identical tokens keeps them identical
    one = create_model("deit_micro_convffn", convffn_layers=(0,)).eval()
    grid = one.forward_features(x)[0, 1:].reshape(8, 8, -1)
    interior = grid[1:7, 1:7].reshape(36, -1)
    assert (interior - interior[0]).abs().max() < 1e-4
    assert (grid[0, 0] - interior[0]).abs().max() > 1e-3


def test_convffn_only_in_chosen_blocks():
    m = create_model("deit_micro_convffn", convffn_layers=(0, 5))
    assert sorted(m.conv_ffn.convs) == ["0", "5"]
    assert m(torch.randn(1, 3, 40, 48)).shape == (1, 10)
    with pytest.raises(ValueError, match="convffn_layers"):
        create_model("deit_micro_convffn", convffn_layers=(9,))


def test_convffn_dilated_on_an_upsampled_grid_is_the_upsampled_plain_convffn():
    """convffn_fixed_grid="dilate": the training grid is untouched; at 2x, on a hidden map upsampled 2x
    (nearest), each kernel sees what it saw at 1x, so the output is the plain one's upsampled."""
    from cpvt.pos import ConvFFN
    from cpvt.pos.base import ModelShape
    from cpvt.tokens import Grid

    torch.manual_seed(0)
    shape = ModelShape(dim=8, depth=2, num_heads=2, grid=(4, 4), num_prefix=1, mlp_hidden=16)
    dil, plain = ConvFFN(shape, fixed_grid="dilate"), ConvFFN(shape)
    for conv in dil.convs.values():
        torch.nn.init.normal_(conv.bias)  # non-zero biases, so the check covers them too
    plain.load_state_dict(dil.state_dict())
    h4 = torch.randn(2, 1 + 16, 16)
    g4, g8 = Grid(4, 4, 1), Grid(8, 8, 1)
    assert torch.equal(dil.ffn_hidden(g4, 0)(h4), plain.ffn_hidden(g4, 0)(h4))
    up = lambda m: torch.nn.functional.interpolate(m, scale_factor=2, mode="nearest")  # noqa: E731
    h8 = torch.cat([h4[:, :1], Grid.from_map(up(Grid(4, 4).to_map(h4[:, 1:])))], 1)
    out8, out4 = dil.ffn_hidden(g8, 0)(h8), plain.ffn_hidden(g4, 0)(h4)
    assert torch.allclose(out8[:, 1:], Grid.from_map(up(Grid(4, 4).to_map(out4[:, 1:]))), atol=1e-5)
    assert torch.equal(out8[:, :1], h8[:, :1])  # the class token skips the convolution
    assert not torch.allclose(plain.ffn_hidden(g8, 0)(h8), out8, atol=1e-3)  # the plain kernels differ at 2x
    with pytest.raises(ValueError, match="convffn_fixed_grid"):
        ConvFFN(shape, fixed_grid="resample")


def test_convffn_dilated_model_matches_at_the_training_size_only():
    torch.manual_seed(0)
    plain = create_model("deit_micro_convffn").eval()
    dil = create_model("deit_micro_convffn", convffn_fixed_grid="dilate").eval()
    dil.load_state_dict(plain.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(dil(x), plain(x))
        big = torch.randn(2, 3, 64, 48)
        assert dil(big).shape == (2, 10) and not torch.allclose(dil(big), plain(big), atol=1e-4)


def test_conv_embedding_overlaps_and_marks_the_border_on_a_constant_image():
    torch.manual_seed(0)
    m = create_model("deit_micro_convembed").eval()
    assert m.patch_embed.proj.kernel_size == (7, 7) and m.patch_embed.proj.stride == (4, 4)
    for h, w in [(32, 32), (40, 56)]:
        tokens, grid = m.patch_embed(torch.randn(1, 3, h, w))
        assert (grid.h, grid.w) == (h // 4, w // 4) and tokens.shape == (1, h // 4 * w // 4, 128)
    tokens, grid = m.patch_embed(torch.full((1, 3, 32, 32), 0.7))
    t = tokens[0].reshape(8, 8, -1)
    interior = t[1:7, 1:7].reshape(36, -1)
    assert (interior - interior[0]).abs().max() < 1e-5  # a 7x7 kernel at stride 4 reaches padding only at the edge
    assert (t[0, 0] - interior[0]).abs().max() > 1e-3
    plain = create_model("deit_micro_nope").eval()
    pt = plain.patch_embed(torch.full((1, 3, 32, 32), 0.7))[0][0]
    assert (pt - pt[0]).abs().max() < 1e-6  # a non-overlapping embedding cannot tell tokens apart
