"""2D RoPE and 2D-ALiBi: their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from cpvt.models import create_model
from cpvt.pos import ALiBi2D, Grid, ModelShape, RoPE2D
from cpvt.pos.alibi import alibi_slopes
from cpvt.pos.rope import rotate_pairs
from cpvt.tokens import BlockPosition

SHAPE = ModelShape(dim=64, depth=3, num_heads=2, num_prefix=1, grid=(6, 6))


@pytest.mark.parametrize("mode", ["axial", "mixed"])
def test_rope_logit_depends_only_on_the_relative_offset(mode):
    torch.manual_seed(0)
    rope = RoPE2D(SHAPE, mode=mode)
    grid = Grid(7, 9, 1)
    angles = rope.qk_angles(grid, layer=1)  # (heads or 1, N, D/2)
    q, k = torch.randn(2, 32), torch.randn(2, 32)  # one query and key vector per head

    def logit(a, b):  # query at token a, key at token b
        qa = rotate_pairs(q[:, None], angles[:, a : a + 1])[:, 0]
        kb = rotate_pairs(k[:, None], angles[:, b : b + 1])[:, 0]
        return (qa * kb).sum(-1)  # (heads,)

    idx = lambda y, x: y * grid.w + x  # noqa: E731
    for dy, dx in [(0, 0), (1, 2), (-2, 3), (3, -4)]:
        ref = logit(idx(3, 4), idx(3 + dy, 4 + dx))
        for y, x in [(0, 4), (2, 0), (3, 1), (1, 5)]:
            if 0 <= y + dy < grid.h and 0 <= x + dx < grid.w:
                torch.testing.assert_close(logit(idx(y, x), idx(y + dy, x + dx)), ref, atol=1e-4, rtol=1e-4)
    # and it does depend on the offset
    assert not torch.allclose(logit(idx(0, 0), idx(0, 1)), logit(idx(0, 0), idx(1, 0)), atol=1e-3)


def test_rope_is_a_rotation_and_leaves_the_class_token_alone():
    torch.manual_seed(0)
    model = create_model("deit_micro_rope_mixed").eval()
    attn = model.blocks[0].attn
    attn.keep_attn = True
    model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(attn.last_attn.sum(-1), torch.ones(2, 4, 65), atol=1e-5, rtol=0)
    rope = model.rope
    t = torch.randn(4, 64, 32)  # (heads, N, head_dim)
    r = rotate_pairs(t, rope.qk_angles(Grid(8, 8, 1), 0))
    torch.testing.assert_close(r.norm(dim=-1), t.norm(dim=-1).expand_as(r.norm(dim=-1)), atol=1e-4, rtol=1e-4)
    assert {n for n, _ in model.named_parameters() if n.startswith("rope")} == {"rope.freqs"}
    assert "rope.freqs" in model.no_weight_decay()
    assert "rope.freqs" not in create_model("deit_micro_rope").state_dict()  # axial: nothing learned


def explicit_attention(attn, tokens, pos):
    """softmax(q k^T / sqrt(d) + bias) v through ``attn``'s projections, written out independently of the layer:
    RoPE turns each channel pair of a patch token's query and key as a complex number, ``(a + ib) e^(i angle)``."""
    b, t, c = tokens.shape
    h, d = attn.num_heads, c // attn.num_heads
    q, k, v = (tokens @ attn.qkv.weight.T + attn.qkv.bias).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
    if pos.qk_angles is not None:
        p = pos.grid.num_prefix
        turn = torch.polar(torch.ones_like(pos.qk_angles), pos.qk_angles)  # (heads or 1, N, d/2)

        def rotate(z):
            pairs = torch.view_as_complex(z[:, :, p:].reshape(b, h, t - p, d // 2, 2).contiguous())
            return torch.cat([z[:, :, :p], torch.view_as_real(pairs * turn).flatten(-2)], dim=2)

        q, k = rotate(q), rotate(k)
    logits = q @ k.transpose(-2, -1) / math.sqrt(d)
    if pos.attn_bias is not None:
        logits = logits + pos.attn_bias
    weights = logits.softmax(-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(b, t, c)), weights


@pytest.mark.parametrize("name", ["deit_micro_rope", "deit_micro_rope_mixed", "deit_micro_alibi"])
def test_rope_sdpa_path_matches_the_explicit_softmax(name):
    """Every block's attention output (SDPA) is the explicit softmax attention with RoPE on q and k (or ALiBi's
    bias on the logits); the probabilities ``keep_attn`` stores are the explicit ones, and keeping them does not
    change the output."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, 40, 32)  # a non-square 10x8 grid
    calls = []
    hooks = [blk.attn.register_forward_hook(lambda m, args, out: calls.append((m, args[0], args[1], out)))
             for blk in model.blocks]
    with torch.no_grad():
        out = model(x)
        assert len(calls) == len(model.blocks)
        for attn, tokens, pos, y in calls:
            assert pos.qk_delta is None and pos.content_bias is None and pos.qkv_tokens is None
            assert (pos.qk_angles is not None) == ("rope" in name) and (pos.attn_bias is not None) == ("alibi" in name)
            expected, _ = explicit_attention(attn, tokens, pos)
            torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
            # the position does matter here: the same attention without it is far off
            plain, _ = explicit_attention(attn, tokens, BlockPosition(pos.grid))
            assert (y - plain).abs().max() > 1e-3
        calls.clear()
        for blk in model.blocks:
            blk.attn.keep_attn = True
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
        for attn, tokens, pos, _ in calls:
            torch.testing.assert_close(attn.last_attn, explicit_attention(attn, tokens, pos)[1], atol=1e-5, rtol=1e-4)
    for hook in hooks:
        hook.remove()


def test_alibi_bias_is_distance_times_the_configured_slopes():
    alibi = ALiBi2D(SHAPE)
    grid = Grid(4, 5, 1)
    bias = alibi.attn_bias(grid, 0)
    assert bias.shape == (2, 21, 21)
    slopes = alibi_slopes(2)
    torch.testing.assert_close(slopes, torch.tensor([2.0**-4, 2.0**-8]))
    assert (bias[:, 0] == 0).all() and (bias[:, :, 0] == 0).all()  # class token: no bias
    a, b = 1 + 0 * 5 + 0, 1 + 3 * 5 + 4  # (0, 0) and (3, 4): distance 5
    torch.testing.assert_close(bias[:, a, b], -5 * slopes)
    torch.testing.assert_close(bias[:, b, a], -5 * slopes)
    assert (bias.diagonal(dim1=1, dim2=2) == 0).all()
    # a function of distance only: equal distances, equal bias, anywhere on the grid
    c, d = 1 + 1 * 5 + 1, 1 + 1 * 5 + 4  # (1, 1)-(1, 4): distance 3
    e, f = 1 + 0 * 5 + 2, 1 + 3 * 5 + 2  # (0, 2)-(3, 2): distance 3
    torch.testing.assert_close(bias[:, c, d], bias[:, e, f])
    assert not any(True for _ in alibi.parameters())
    learned = ALiBi2D(SHAPE, learned=True)
    assert [n for n, _ in learned.named_parameters()] == ["slopes"]


@pytest.mark.parametrize("name", ["deit_micro_rope", "deit_micro_rope_mixed", "deit_micro_alibi"])
def test_new_encodings_run_at_any_grid_and_combine_with_a_peg(name):
    m = create_model(name).eval()
    for size in [(32, 32), (48, 64), (64, 64)]:
        assert m(torch.randn(1, 3, *size)).shape == (1, 10)
    both = create_model(name, pos=m.model_args["pos"] + "+peg").eval()
    assert both(torch.randn(1, 3, 40, 40)).shape == (1, 10)


def test_rope_rejects_head_dims_it_cannot_split():
    with pytest.raises(ValueError, match="divisible by 4"):
        create_model("deit_micro_rope", embed_dim=24, num_heads=4)
    with pytest.raises(ValueError, match="rope_mode"):
        create_model("deit_micro_rope", rope_mode="spiral")


def _reference_slopes(n: int) -> list[float]:
    """ALiBi's get_slopes (Press et al. 2022, reference code), written out."""
    def power_of_2(k: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(k) - 3)))
        return [start * start**i for i in range(k)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _reference_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_alibi_slopes_follow_the_reference_for_any_head_count(heads):
    torch.testing.assert_close(alibi_slopes(heads), torch.tensor(_reference_slopes(heads)))


def test_alibi_slopes_for_ti_s_b_head_counts():
    torch.testing.assert_close(alibi_slopes(3), torch.tensor([0.0625, 2.0**-8, 0.25]))  # DeiT-Ti
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]))
    assert len(set(alibi_slopes(12).tolist())) == 12  # ViT-B: all distinct
    with pytest.raises(ValueError, match="at least one head"):
        alibi_slopes(0)


@pytest.mark.parametrize("mode", ["axial", "mixed"])
def test_rope_interpolated_keeps_the_training_grids_angles(mode):
    """fixed_grid="interpolate": token (2i, 2j) of a 2x grid turns as token (i, j) of the training grid; per axis;
    on the training grid nothing changes."""
    torch.manual_seed(0)
    plain = RoPE2D(SHAPE, mode=mode)
    torch.manual_seed(0)
    interp = RoPE2D(SHAPE, mode=mode, fixed_grid="interpolate")
    train, double = Grid(6, 6, 1), Grid(12, 6, 1)  # 2x on rows only
    assert torch.equal(interp.qk_angles(train, 1), plain.qk_angles(train, 1))
    big = interp.qk_angles(double, 1).unflatten(1, (12, 6))
    small = plain.qk_angles(train, 1).unflatten(1, (6, 6))
    torch.testing.assert_close(big[:, ::2], small)  # rows 0, 2, 4, ... of the 2x grid are the training rows
    assert not torch.allclose(plain.qk_angles(double, 1).unflatten(1, (12, 6))[:, ::2], small)  # plain extrapolates
    # offsets stay inside the training range: the largest row offset is 5.5 training rows, not 11
    ys, _ = interp.positions(double)
    assert ys.max() - ys.min() == pytest.approx(5.5)
    with pytest.raises(ValueError, match="rope_fixed_grid"):
        RoPE2D(SHAPE, fixed_grid="dilate")
    model = create_model("deit_micro_rope_mixed", depth=2, embed_dim=32, num_heads=4, rope_fixed_grid="interpolate")
    assert model(torch.randn(1, 3, 48, 64)).shape == (1, 10)  # any grid, through the registry's option
