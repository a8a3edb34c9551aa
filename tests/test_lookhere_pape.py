"""LookHere and PaPE: hand-computed masks and penalties, PaPE's bias against its formula, any-resolution forwards."""

from __future__ import annotations

import math

import pytest
import torch

import cpvt
from cpvt.pos import Grid, LookHere, ModelShape, PaPE
from cpvt.pos.lookhere import head_plan, lookhere_maps

SHAPE = ModelShape(dim=32, depth=6, num_heads=4, num_prefix=1, grid=(3, 3))


def visible(direction: str, query: tuple[int, int], grid=(3, 3)) -> set[tuple[int, int]]:
    """The (row, col) keys a query may see under one direction, read off the map."""
    maps = lookhere_maps(Grid(*grid), [direction], [1.0])[0]
    q = query[0] * grid[1] + query[1]
    return {divmod(k, grid[1]) for k in range(grid[0] * grid[1]) if math.isfinite(maps[q, k].item())}


ALL = {(r, c) for r in range(3) for c in range(3)}


@pytest.mark.parametrize("direction, keys", [
    ("up", {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)}),  # rows at or above the query (row 0 is the top)
    ("down", {(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)}),
    ("left", {(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)}),
    ("right", {(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)}),
    ("tri_up", {(0, 0), (0, 1), (0, 2), (1, 1)}),  # -dy >= |dx|: the 90-degree cone above, edges included
    ("tri_right", {(0, 2), (1, 2), (2, 2), (1, 1)}),
    ("up&left", {(0, 0), (0, 1), (1, 0), (1, 1)}),  # a quadrant
    ("diag_up_right", {(0, 1), (0, 2), (1, 2), (0, 0), (1, 1), (2, 2)}),  # dx >= dy: above the main diagonal
    ("diag_down_right", {(0, 2), (1, 1), (2, 0), (1, 2), (2, 1), (2, 2)}),  # dx + dy >= 0
    ("tri_up&left", {(0, 0), (0, 1), (1, 1)}),  # an octant: north to north-west
    ("none", ALL),
])
def test_lookhere_directions_from_the_centre_of_a_3x3_grid(direction, keys):
    assert visible(direction, (1, 1)) == keys


def test_lookhere_corner_query_and_self_visibility():
    assert visible("up", (0, 0)) == {(0, 0), (0, 1), (0, 2)}  # the top row: only its own row
    assert visible("tri_down", (0, 1)) == {(0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)}  # dy >= |dx|
    maps = lookhere_maps(Grid(4, 5), [d for g in ("halves", "diagonals", "corners", "eighths1") for d in
                                      head_plan(g, 4)[0]], [1.0] * 16)
    assert (maps.diagonal(dim1=1, dim2=2) == 0).all()  # every token sees itself, unpenalised: no empty row


def test_lookhere_penalty_values_per_layer_and_class_token():
    lh = LookHere(SHAPE)  # 4 heads, not a multiple of 3: the four half-planes
    assert lh.directions == ["up", "down", "left", "right"]
    grid = Grid(3, 3, 1)
    first, last = lh.attn_bias(grid, 0), lh.attn_bias(grid, 5)
    assert first.shape == (4, 10, 10)
    q, k = 1 + 2 * 3 + 0, 1 + 0 * 3 + 2  # (2, 0) looks at (0, 2): up and right, distance sqrt(8)
    d = math.sqrt(8)
    # global 2 x layer slope (1.5 in block 0, 0.5 in the last) x head slope 0.5 x distance
    assert first[0, q, k].item() == pytest.approx(-2 * 1.5 * 0.5 * d)
    assert last[3, q, k].item() == pytest.approx(-2 * 0.5 * 0.5 * d)
    assert first[1, q, k].item() == -math.inf and first[2, q, k].item() == -math.inf  # down, left: hidden
    assert (first[:, 0] == 0).all() and (first[:, :, 0] == 0).all()  # the class token: no mask, no penalty
    middle = lh.attn_bias(grid, 2)
    assert middle[0, q, k].item() == pytest.approx(-2 * (1.5 - 2 * 0.2) * 0.5 * d)  # linear in depth


def test_lookhere_head_plans_follow_the_papers_variants():
    dirs, slopes = head_plan("180", 12)
    assert dirs[:4] == ["up", "down", "left", "right"] and dirs[8:] == ["none"] * 4
    assert slopes == [0.5] * 8 + [0.25, 0.0625, 0.015625, 0.00390625]
    assert head_plan("auto", 12) == (dirs, slopes)
    assert head_plan("90", 12)[0][:4] == ["up&left", "up&right", "down&left", "down&right"]
    assert len(set(head_plan("45", 12)[0][:8])) == 8  # eight octants
    assert head_plan("auto", 3)[0] == ["up", "diag_up_right", "none"]  # DeiT-Ti: one head per group
    with pytest.raises(ValueError, match="do not split 4 heads"):
        head_plan("180", 4)
    with pytest.raises(ValueError, match="unknown LookHere direction"):
        head_plan("halves-sideways", 4)


def test_lookhere_octants_cover_every_key_once_apart_from_their_edges():
    dirs = head_plan("eighths1-eighths2", 8)[0]
    maps = lookhere_maps(Grid(7, 7), dirs, [1.0] * 8)
    assert len(set(dirs)) == 8
    seen = torch.isfinite(maps[:, 24]).sum(0).view(7, 7)  # the centre query (3, 3), per key: how many octants see it
    # inside an octant: that octant alone; on an axis or a diagonal, the edge two octants share; the query itself: all
    dy, dx = torch.meshgrid(torch.arange(7) - 3, torch.arange(7) - 3, indexing="ij")
    edge = (dy == 0) | (dx == 0) | (dy.abs() == dx.abs())
    expected = torch.where(edge, 2, 1).masked_fill((dy == 0) & (dx == 0), 8)
    assert torch.equal(seen, expected), seen


# -- PaPE ---------------------------------------------------------------------
def test_pape_bias_matches_its_formula():
    torch.manual_seed(0)
    pape = PaPE(SHAPE, parabolas=3)
    grid = Grid(3, 4, 1)
    x = torch.randn(2, grid.num_tokens, 32)
    bias = pape.bias(x, grid, layer=2)
    assert bias.shape == (2, 4, 13, 13)
    pos = pape.positions(grid)  # (T, 2): (column, row), class token at (-1, -1)
    assert pos[0].tolist() == [-1.0, -1.0] and pos[1 + 1 * 4 + 3].tolist() == [3.0, 1.0]
    w = pape.position[2].view(4, 3, 2)
    ab = (x @ pape.curve[2].T).view(2, 13, 2, 4, 3)
    a, b = torch.nn.functional.softplus(ab[:, :, 0]), ab[:, :, 1]  # (B, T, H, K)
    for h in range(4):
        for i in (0, 5, 12):
            for j in (0, 3, 7, 12):
                dk = w[h] @ (pos[i] - pos[j])  # (K,)
                expected = (-a[:, i, h] * dk**2 + b[:, i, h] * dk).sum(-1) / math.sqrt(8)  # scale: head_dim 8
                torch.testing.assert_close(bias[:, h, i, j], expected, rtol=1e-4, atol=1e-4)


def test_pape_interpolated_gives_each_token_pair_its_training_grid_bias():
    torch.manual_seed(0)
    pape = PaPE(SHAPE, parabolas=3, fixed_grid="interpolate")  # trained on 3x3
    plain = PaPE(SHAPE, parabolas=3)
    plain.load_state_dict(pape.state_dict())
    small, big = Grid(3, 3, 1), Grid(6, 6, 1)
    pos = pape.positions(big)
    assert pos[0].tolist() == [-1.0, -1.0] and pos[1 + 4 * 6 + 2].tolist() == [1.0, 2.0]  # (column, row) / 2
    assert torch.equal(pape.positions(small), plain.positions(small))
    # token (2i, 2j) of the 6x6 grid sits where (i, j) sat on 3x3: with the same content, the same bias
    x = torch.randn(1, big.num_tokens, 32)
    on_even = [0] + [1 + 2 * i * 6 + 2 * j for i in range(3) for j in range(3)]
    torch.testing.assert_close(pape.bias(x, big, 1)[:, :, on_even][:, :, :, on_even],
                               plain.bias(x[:, on_even], small, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pape_fixed_grid"):
        PaPE(SHAPE, fixed_grid=True)


def test_pape_is_concave_around_each_query_and_keeps_its_own_init():
    pape = PaPE(SHAPE)
    assert pape.parabolas == 6  # 50 per head at head width 64, here 8
    with torch.no_grad():
        pape.curve[:, 4 * 6 :].zero_()  # no linear term: -a * d^2 only
    grid = Grid(5, 5, 0)
    bias = pape.bias(torch.randn(1, 25, 32), grid, 0)
    assert (bias <= 1e-4).all() and (bias.diagonal(dim1=2, dim2=3).abs() < 1e-4).all()  # float32 rounding
    model = cpvt.create_model("deit_micro_pape")  # the model's trunc-normal(0.02) init must not reach PaPE
    assert model.pape.position.abs().max() > 0.3  # nn.Linear's default: uniform(+-1/sqrt(2))
    decayed = {n for n, p in model.named_parameters()} - set(model.no_weight_decay())
    assert "pape.position" in decayed and "pape.curve" in decayed
    with pytest.raises(ValueError, match="at least 1"):
        PaPE(SHAPE, parabolas=0)


# -- any resolution, and the PEG combinations ----------------------------------------
NEW = ["deit_micro_lookhere", "deit_micro_pape", "cpvt_micro_alibi", "cpvt_micro_rope_mixed", "cpvt_micro_lookhere"]


@pytest.mark.parametrize("name", NEW)
def test_new_models_run_at_any_resolution(name):
    torch.manual_seed(0)
    model = cpvt.create_model(name, num_classes=5).eval()
    for size in ((32, 32), (48, 48), (64, 40), (16, 24)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            y = model(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yb = model(x).float()
        assert y.shape == (2, 5) and torch.isfinite(y).all() and torch.isfinite(yb).all(), size
        assert (y - yb).abs().max() < 0.05
    model.train()
    model(torch.randn(2, 3, 40, 40)).sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_peg_combinations_hold_both_encodings():
    assert cpvt.create_model("cpvt_micro_alibi").model_args["pos"] == "alibi+peg"
    model = cpvt.create_model("cpvt_micro_lookhere")
    assert isinstance(model.lookhere, LookHere) and hasattr(model, "pos_block")
    assert cpvt.create_model("cpvt_micro_rope_mixed").rope.mode == "mixed"


@pytest.mark.parametrize("name", ["deit_micro_alibi", "deit_micro_lookhere", "deit_micro_rpe", "deit_micro_pape"])
def test_a_logit_bias_keeps_the_fused_cpu_attention_kernel(name):
    # PyTorch's fused CPU SDPA kernel takes a 4D mask only: a 3D (heads, T, T) bias silently fell back to the
    # math path, 6x slower at 785 tokens (benchmarks/attention_bias.py)
    from torch.profiler import profile

    model = cpvt.create_model(name, depth=2, embed_dim=32, num_heads=4, img_size=32).eval()
    with torch.inference_mode(), profile() as prof:
        model(torch.randn(2, 3, 48, 48))
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops
