"""One test per encoding for the property that defines it."""

import functools
import math

import pytest
import torch

import cpvt
from cpvt.layers import Attention
from cpvt.pos import (
    ENCODINGS,
    PEG,
    BlockPosition,
    Grid,
    LearnedAPE,
    ModelShape,
    RelPosBias,
    SinCos2D,
    build_position_encodings,
    encoding_options,
    resample_abs_pos_embed,
)
from cpvt.pos.rpe import relative_index

SHAPE = ModelShape(dim=16, depth=4, num_heads=2, num_prefix=1, grid=(4, 4))


def shape(**kw):
    return ModelShape(**{**SHAPE.__dict__, **kw})


# -- 2D sin-cos ---------------------------------------------------------------
def test_sincos_values_match_the_formula():
    enc = SinCos2D(shape(dim=8, grid=(3, 5)))
    grid = Grid(3, 5, 1)
    table = enc.table(grid)
    quarter = 2  # dim / 4 frequencies per (axis, sin|cos)
    for token in range(15):
        row, col = divmod(token, 5)
        expected = []
        for coord in (col, row):  # MAE's order: column (x) first
            omegas = [10000 ** (-i / quarter) for i in range(quarter)]
            expected += [math.sin(coord * w) for w in omegas] + [math.cos(coord * w) for w in omegas]
        assert table[token].tolist() == pytest.approx(expected, abs=1e-6)
    x = torch.zeros(2, 16, 8)
    out = enc.add(x, grid)
    assert torch.equal(out[:, 0], torch.zeros(2, 8))  # the class token gets no sin-cos
    assert torch.allclose(out[0, 1:], table)


def test_sincos_matches_maes_table():
    """MAE's get_2d_sincos_pos_embed (He et al. 2022), written out with numpy: a meshgrid with x first, the
    first half of the channels from grid[0] (the column), each 1D half sin then cos at 1 / 10000^(2i/d)."""
    import numpy as np  # a dependency of cpvt itself
    dim, size = 16, 5

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32)), axis=0)
    mae = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    ours = SinCos2D(shape(dim=dim, grid=(size, size))).table(Grid(size, size))
    assert torch.allclose(ours, torch.from_numpy(mae).float(), atol=1e-6)


def test_sincos_is_computed_for_any_grid():
    enc = SinCos2D(shape())
    assert enc.table(Grid(7, 3)).shape == (21, 16)
    assert torch.equal(enc.table(Grid(4, 4)), enc.base_table)
    with pytest.raises(ValueError, match="divisible by 4"):
        SinCos2D(shape(dim=18))


def test_sincos_interpolated_samples_the_training_table_more_finely():
    enc = SinCos2D(shape(), fixed_grid="interpolate")  # trained on 4x4
    plain = SinCos2D(shape())
    assert torch.equal(enc.table(Grid(4, 4)), plain.table(Grid(4, 4)))
    fine = enc.table(Grid(8, 12)).view(8, 12, 16)  # steps 1/2 down, 1/3 across
    torch.testing.assert_close(fine[::2, ::3], plain.base_table.view(4, 4, 16), rtol=0, atol=1e-6)
    assert not torch.allclose(fine[1, 1], plain.table(Grid(8, 12)).view(8, 12, 16)[1, 1])  # (1/2, 1/3), not (1, 1)
    with pytest.raises(ValueError, match="sincos_fixed_grid"):
        SinCos2D(shape(), fixed_grid="dilate")


# -- learned APE --------------------------------------------------------------
def test_ape_resampling_is_identity_on_its_own_grid():
    ape = LearnedAPE(shape())
    assert resample_abs_pos_embed(ape.table, (4, 4), (4, 4), 1) is ape.table
    x = torch.randn(2, 17, 16)
    assert torch.equal(ape.add(x, Grid(4, 4, 1)), x + ape.table)


def test_ape_resamples_bicubically_and_keeps_the_class_entry():
    ape = LearnedAPE(shape())
    out = resample_abs_pos_embed(ape.table, (6, 2), (4, 4), 1)
    assert out.shape == (1, 1 + 12, 16)
    assert torch.equal(out[:, 0], ape.table[:, 0])
    # A table that is constant over the grid stays constant at any size.
    with torch.no_grad():
        ape.table[:, 1:] = 0.5
    assert torch.allclose(resample_abs_pos_embed(ape.table, (9, 7), (4, 4), 1)[:, 1:], torch.tensor(0.5))
    assert ape.add(torch.zeros(1, 1 + 63, 16), Grid(9, 7, 1)).shape == (1, 64, 16)


def test_ape_state_dict_key_is_timms_bare_pos_embed():
    model = cpvt.create_model("deit_micro")
    assert "pos_embed" in model.state_dict() and "pos_embed.table" not in model.state_dict()
    assert "pos_embed.table" in dict(model.named_parameters())
    # ... also with a prefix, as inside a wrapper (DDP's `module.`)
    wrapped = torch.nn.Sequential(model)
    sd = wrapped.state_dict()
    assert "0.pos_embed" in sd
    twin = torch.nn.Sequential(cpvt.create_model("deit_micro"))
    twin.load_state_dict(sd, strict=True)
    assert torch.equal(twin[0].pos_embed.table, model.pos_embed.table)


# -- 2D relative position bias ------------------------------------------------
def test_relative_bias_depends_only_on_the_clipped_offset():
    k = 2
    rpe = RelPosBias(shape(), max_offset=k)
    grid = Grid(5, 7, 1)
    bias = rpe.attn_bias(grid, layer=1)  # (heads, T, T)
    assert bias.shape == (2, 36, 36)
    coords = [divmod(i, 7) for i in range(35)]
    by_offset = {}
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            off = (max(-k, min(k, yi - yj)), max(-k, min(k, xi - xj)))
            by_offset.setdefault(off, []).append(bias[:, 1 + i, 1 + j])
    assert len(by_offset) == (2 * k + 1) ** 2
    for values in by_offset.values():
        assert all(torch.equal(values[0], v) for v in values)
    # different offsets have different (random) entries
    assert len({tuple(v[0].tolist()) for v in by_offset.values()}) == len(by_offset)
    # and the same table serves any grid: the (1, 0) entry is the same at 3x3
    small = rpe.attn_bias(Grid(3, 3, 1), layer=1)
    assert torch.equal(small[:, 1 + 3, 1], by_offset[(1, 0)][0])


def test_relative_bias_is_per_layer_unless_shared():
    grid = Grid(3, 3, 1)
    per_layer = RelPosBias(shape())
    assert not torch.equal(per_layer.attn_bias(grid, 0), per_layer.attn_bias(grid, 1))
    shared = RelPosBias(shape(), shared=True)
    assert torch.equal(shared.attn_bias(grid, 0), shared.attn_bias(grid, 3))
    idx = relative_index(3, 3, 1, 8)
    assert idx[0, 0] == 17**2 + 2 and idx[0, 1] == 17**2 and idx[1, 0] == 17**2 + 1


# -- PEG ----------------------------------------------------------------------
def _peg(**kw):
    return PEG(shape(num_prefix=kw.pop("num_prefix", 0)), **kw)


def _roll(tokens, grid, dy, dx):
    return Grid.from_map(torch.roll(grid.to_map(tokens), shifts=(dy, dx), dims=(2, 3)))


def test_peg_with_circular_padding_is_equivariant_to_circular_shifts():
    torch.manual_seed(0)
    grid = Grid(5, 6)
    x = torch.randn(2, 30, 16)
    for padding, equivariant in (("circular", True), ("zeros", False)):
        peg = _peg(padding=padding)
        out_of_shifted, _ = peg.between(_roll(x, grid, 2, 3), grid, 0)
        shifted_out = _roll(peg.between(x, grid, 0)[0], grid, 2, 3)
        assert torch.allclose(out_of_shifted, shifted_out, atol=1e-6) == equivariant


def test_zero_padding_makes_border_tokens_differ():
    """On a constant input every token is alike; only zero padding tells borders apart."""
    grid = Grid(5, 5)
    x = torch.ones(1, 25, 16)
    for padding in ("zeros", "circular", "replicate"):
        delta = Grid(5, 5).to_map(_peg(padding=padding).between(x, grid, 0)[0] - x)  # (1, C, 5, 5)
        interior = delta[..., 1:-1, 1:-1]
        assert torch.allclose(interior, interior[..., :1, :1].expand_as(interior), atol=1e-6)
        border_differs = not torch.allclose(delta, delta[..., 2:3, 2:3].expand_as(delta), atol=1e-6)
        assert border_differs == (padding == "zeros"), padding


def test_fixed_grid_peg_marks_relative_positions_at_any_grid():
    """On its own grid it is the plain PEG; elsewhere its border signal is the training grid's, resampled."""
    torch.manual_seed(0)
    fixed = PEG(shape(grid=(4, 4)), fixed_grid=True)
    plain = PEG(shape(grid=(4, 4)))
    plain.load_state_dict(fixed.state_dict())
    x = torch.randn(2, 1 + 16, 16)
    assert torch.equal(fixed.between(x, Grid(4, 4, 1), 0)[0], plain.between(x, Grid(4, 4, 1), 0)[0])
    # a constant image at 8x8: the plain PEG marks only the outermost ring of tokens, the fixed-grid one
    # marks the outer quarter, as the 4x4 grid's border does
    const8, const4 = torch.ones(1, 1 + 64, 16), torch.ones(1, 1 + 16, 16)
    d_fixed = Grid(8, 8).to_map(fixed.between(const8, Grid(8, 8, 1), 0)[0][:, 1:] - 1)
    d_plain = Grid(8, 8).to_map(plain.between(const8, Grid(8, 8, 1), 0)[0][:, 1:] - 1)
    d_ref = Grid(4, 4).to_map(fixed.between(const4, Grid(4, 4, 1), 0)[0][:, 1:] - 1)
    up = torch.nn.functional.interpolate(d_ref, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(d_fixed, up, atol=1e-5)
    row = (d_plain - d_plain[..., 3:4, 3:4]).abs().amax(dim=(0, 1))  # (8, 8) distance from the centre's value
    assert row[1, 1:-1].max() < 1e-5 and row[0].min() > 1e-3  # plain: only the border ring differs
    row = (d_fixed - d_fixed[..., 3:4, 3:4]).abs().amax(dim=(0, 1))
    assert row[1, 1:-1].max() > 1e-3  # fixed grid: the second ring carries border signal too


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
@pytest.mark.parametrize("kind", ["depthwise", "separable"])
def test_dilated_peg_on_an_upsampled_grid_is_the_upsampled_plain_peg(kind, padding):
    """fixed_grid="dilate" at 2x: on a map upsampled 2x (nearest), the output is the plain PEG's on the
    original map, upsampled the same way, so every token sees what it saw at 1x (content and border alike)."""
    torch.manual_seed(0)
    dil = PEG(shape(grid=(4, 4)), positions=(0,), kernel_size=3, kind=kind, layers=2, padding=padding,
              fixed_grid="dilate")
    plain = PEG(shape(grid=(4, 4)), kind=kind, layers=2, padding=padding)
    for gen in dil.generators_at(0):
        for conv in gen.proj:
            torch.nn.init.normal_(conv.bias)  # non-zero biases, so the check covers them too
    plain.load_state_dict(dil.state_dict())
    x4 = torch.randn(2, 1 + 16, 16)
    assert torch.equal(dil.between(x4, Grid(4, 4, 1), 0)[0], plain.between(x4, Grid(4, 4, 1), 0)[0])
    cls, fmap = x4[:, :1], Grid(4, 4).to_map(x4[:, 1:])
    up = lambda m: torch.nn.functional.interpolate(m, scale_factor=2, mode="nearest")  # noqa: E731
    x8 = torch.cat([cls, Grid.from_map(up(fmap))], 1)
    out8 = dil.between(x8, Grid(8, 8, 1), 0)[0]
    out4 = plain.between(x4, Grid(4, 4, 1), 0)[0]
    assert torch.allclose(out8[:, 1:], Grid.from_map(up(Grid(4, 4).to_map(out4[:, 1:]))), atol=1e-5)
    assert torch.equal(out8[:, :1], cls)
    # and the dilation is per axis: 8x4 dilates rows only, and still runs at a non-integer ratio
    assert dil.between(torch.randn(1, 1 + 32, 16), Grid(8, 4, 1), 0)[0].shape == (1, 33, 16)
    assert dil.between(torch.randn(1, 1 + 30, 16), Grid(6, 5, 1), 0)[0].shape == (1, 31, 16)
    gen = dil.generators_at(0)[0]
    dilation = lambda h, w: dil._generator(gen, Grid(h, w, 1)).keywords["dilation"]  # noqa: E731
    assert dilation(6, 5) == (2, 1) and dilation(10, 14) == (3, 4)  # ratios rounded half up: 1.5, 1.25, 2.5, 3.5


def test_triangle_smooth_reads_the_tokens_covering_one_coarser_token():
    from cpvt.pos.peg import triangle_smooth

    m = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 2, 3, 6) ** 2  # varies along columns only
    out = triangle_smooth(m, (1, 2))
    row = m[0, 0, 0]
    assert torch.allclose(out[0, 0, 0, 1:-1], (row[:-2] + 2 * row[1:-1] + row[2:]) / 4)  # 1/4, 1/2, 1/4
    assert torch.allclose(out[0, 0, 0, 0], (2 * row[0] + row[1]) / 3)  # only the tokens inside the grid count
    assert torch.equal(out[:, :, 0], out[:, :, 2])  # d = 1 along rows: untouched
    w = torch.tensor([1.0, 2, 3, 2, 1]) / 9  # d = 3: width 5
    assert torch.allclose(triangle_smooth(m, (1, 3))[0, 0, 0, 2:4], torch.stack([(row[0:5] * w).sum(), (row[1:6] * w).sum()]))
    const = torch.full((1, 3, 5, 7), 2.5)
    assert torch.allclose(triangle_smooth(const, (2, 3)), const)  # no border signal of its own
    assert torch.equal(triangle_smooth(m, (1, 1)), m)


def test_smoothed_dilation_is_the_plain_peg_on_the_training_grid_and_does_not_export(monkeypatch):
    torch.manual_seed(0)
    smooth = PEG(shape(grid=(4, 4)), positions=(0,), fixed_grid="dilate_smooth")
    dil = PEG(shape(grid=(4, 4)), positions=(0,), fixed_grid="dilate")
    plain = PEG(shape(grid=(4, 4)), positions=(0,))
    dil.load_state_dict(smooth.state_dict())
    plain.load_state_dict(smooth.state_dict())
    x4, x8 = torch.randn(2, 1 + 16, 16), torch.randn(2, 1 + 64, 16)
    assert torch.equal(smooth.between(x4, Grid(4, 4, 1), 0)[0], plain.between(x4, Grid(4, 4, 1), 0)[0])
    a, b = smooth.between(x8, Grid(8, 8, 1), 0)[0], dil.between(x8, Grid(8, 8, 1), 0)[0]
    assert (a - b).abs().max() > 1e-3
    monkeypatch.setattr("cpvt.pos.peg.is_exporting", lambda: True)
    with pytest.raises(NotImplementedError, match="does not export"):
        smooth.between(x8, Grid(8, 8, 1), 0)


def test_split_dilation_separates_the_border_signal_from_the_content_taps(monkeypatch):
    from cpvt.pos.peg import split_depthwise

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1, groups=3)
    torch.nn.init.normal_(conv.bias)
    m = torch.randn(2, 3, 8, 8)
    for d in ((1, 1), (2, 2), (2, 1)):  # equal dilations: the plain (dilated) zero-padded convolution
        ref = torch.nn.functional.conv2d(m, conv.weight, conv.bias, padding=d, dilation=d, groups=3)
        assert torch.allclose(split_depthwise(conv, m, d, d), ref, atol=1e-5)
    # on a constant map the content term is flat, so all position information is the border term's:
    # dilated by 2 it reaches 2 tokens in from each side, undilated 1
    const = torch.full((1, 3, 8, 8), 1.5)
    def rows_hit(content, border):
        out = split_depthwise(conv, const, content, border)
        column = out[..., :, 4] - out[..., 4:5, 4]  # one interior column, against the interior value
        return (column.abs().amax(dim=(0, 1)) > 1e-5).nonzero().flatten().tolist()

    assert rows_hit((1, 1), (2, 2)) == [0, 1, 6, 7]
    assert rows_hit((2, 2), (1, 1)) == rows_hit((1, 1), (1, 1)) == [0, 7]
    # through the PEG: the plain PEG on the training grid, two different maps above it, and no export
    plain = PEG(shape(grid=(4, 4)), positions=(0,))
    x4, x8 = torch.randn(2, 1 + 16, 16), torch.randn(2, 1 + 64, 16)
    outs, pegs = {}, {}
    for mode in ("dilate_border", "dilate_content", "dilate"):
        pegs[mode] = peg = PEG(shape(grid=(4, 4)), positions=(0,), fixed_grid=mode)
        peg.load_state_dict(plain.state_dict())
        assert torch.equal(peg.between(x4, Grid(4, 4, 1), 0)[0], plain.between(x4, Grid(4, 4, 1), 0)[0])
        outs[mode] = peg.between(x8, Grid(8, 8, 1), 0)[0]
    assert (outs["dilate_border"] - outs["dilate_content"]).abs().max() > 1e-3
    assert (outs["dilate_border"] - outs["dilate"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="peg_padding='zeros'"):
        PEG(shape(grid=(4, 4)), fixed_grid="dilate_border", padding="reflect")
    monkeypatch.setattr("cpvt.pos.peg.is_exporting", lambda: True)  # the export path: shifted taps, same numbers
    for mode in ("dilate_border", "dilate_content"):
        assert torch.allclose(pegs[mode].between(x8, Grid(8, 8, 1), 0)[0], outs[mode], atol=1e-5)


def test_whole_model_with_circular_peg_and_gap_is_shift_invariant():
    """No class token, no APE, circular PEG: circular whole-patch shifts of the image
    leave the GAP logits unchanged; zero padding or an APE breaks that."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    shifted = torch.roll(x, shifts=(8, -12), dims=(2, 3))  # 2 and -3 patches
    results = {}
    for label, kw in {
        "circular": dict(peg_padding="circular"),
        "zeros": dict(),
        "circular+ape": dict(peg_padding="circular", pos="ape+peg"),
    }.items():
        model = cpvt.create_model("cpvt_micro_gap", **kw).eval()
        with torch.no_grad():
            results[label] = torch.allclose(model(x), model(shifted), atol=1e-5)
    assert results == {"circular": True, "zeros": False, "circular+ape": False}


def test_frozen_peg_gets_no_gradient():
    model = cpvt.create_model("cpvt_micro", peg_frozen=True)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, p in model.pos_block.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    assert model.blocks[0].attn.qkv.weight.grad is not None
    assert model.pos_block.get_submodule("0").proj[0].weight.std() > 0.1  # random init kept


def test_one_by_one_control_mixes_no_neighbours():
    grid = Grid(4, 4)
    x = torch.randn(1, 16, 16)
    poke = x.clone()
    poke[0, 5] += 1.0  # change one token
    for k, changed in ((1, {5}), (3, {0, 1, 2, 4, 5, 6, 8, 9, 10})):
        peg = _peg(kernel_size=k)
        diff = (peg.between(poke, grid, 0)[0] - peg.between(x, grid, 0)[0]).abs().sum(-1)[0]
        assert set(torch.nonzero(diff > 1e-7).flatten().tolist()) == changed


def test_peg_leaves_the_class_token_untouched_and_runs_at_its_positions():
    peg = _peg(num_prefix=1, positions=(-1, 2))
    grid = Grid(3, 3, 1)
    x = torch.randn(2, 10, 16)
    for after in (-1, 0, 1, 2, 3):
        out, qk = peg.between(x, grid, after)
        assert qk is None and torch.equal(out[:, 0], x[:, 0])
        assert torch.equal(out, x) == (after not in (-1, 2))


def test_a_peg_after_the_last_block_is_refused_only_where_nothing_reads_it():
    """With a class token only the token reaches the head after the last block, so a PEG there is dead
    (the T3 "PEG at 10 of 12" row once scaled to that on depth-6 models); average pooling reads it."""
    kw = dict(depth=6, embed_dim=64, patch_size=8, num_classes=10, peg_positions=[5])
    with pytest.raises(ValueError, match="class-token model reads no patch token"):
        cpvt.create_model("cpvt_micro", **kw)
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_micro", global_pool="avg", **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("pos_block"):
                p.add_(torch.randn_like(p))
    assert not torch.allclose(model(x), before)


def test_separable_and_stacked_generators():
    peg = _peg(kind="separable", layers=2)
    kinds = [(m.kernel_size, m.groups) for m in peg.get_submodule("0").proj]
    assert kinds == [((3, 3), 16), ((1, 1), 1), ((3, 3), 16), ((1, 1), 1)]
    assert peg.between(torch.randn(1, 9, 16), Grid(3, 3), 0)[0].shape == (1, 9, 16)


def test_qk_only_peg_leaves_the_residual_stream_and_values_unencoded():
    grid = Grid(3, 3, 1)
    x = torch.randn(2, 10, 16)
    out, delta = _peg(num_prefix=1, qk_only=True).between(x, grid, 0)
    assert torch.equal(out, x) and delta is not None and delta.abs().sum() > 0
    # Inside attention: q and k come from the encoded input, v from the plain one.
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    h = torch.randn(2, 10, 16)
    h_qk = h + torch.randn(2, 10, 16)
    got = attn(h, BlockPosition(grid), qk_input=h_qk)
    q, k, _ = attn._heads(attn.qkv(h_qk), 3).unbind(0)
    _, _, v = attn._heads(attn.qkv(h), 3).unbind(0)
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 10, 16))
    assert torch.allclose(got, expected, atol=1e-5)
    # The model wires it: the next block's residual input carries no PEG output.
    model = cpvt.create_model("cpvt_micro", peg_qk_only=True).eval()
    seen = {}
    model.blocks[1].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    model.blocks[0].register_forward_hook(lambda m, a, o: seen.update(block0=o))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert torch.equal(seen["x"], seen["block0"])


def test_ape_plus_peg_uses_both_hooks():
    model = cpvt.create_model("cpvt_micro_ape")
    assert [type(e).__name__ for e in model.position_encodings()] == ["LearnedAPE", "PEG"]
    assert {"pos_embed", "pos_block.0.proj.0.weight"} <= set(model.state_dict())


@pytest.mark.parametrize("name", ["deit_micro_rpe", "deit_micro_rope", "deit_micro_rope_mixed", "deit_micro_alibi",
                                  "deit_micro_lookhere", "deit_micro_pape"])
def test_grid_caches_filled_under_inference_mode_still_train(name):
    """A cached per-grid tensor first built under inference_mode must not break a later backward."""
    torch.manual_seed(0)
    model = cpvt.create_model(name, depth=2, embed_dim=32, num_heads=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()  # raised "Inference tensors cannot be saved for backward" for RPE and PaPE
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# -- test-time grid fixes: declared per scheme, checked and routed by the base class --------------------
FIX_SHAPE = shape(mlp_hidden=32)  # ConvFFN needs the MLP's width
WITH_FIXES = [name for name, cls in ENCODINGS.items() if cls.GRID_FIXES]
FIX_MODELS = {"peg": "cpvt_micro", "convffn": "deit_micro_convffn", "rope": "deit_micro_rope",
              "sincos": "deit_micro_sincos", "pape": "deit_micro_pape"}  # a micro model of each scheme with fixes


@functools.cache
def fixed_grid_logits(model: str, size: tuple[int, int], fix=None) -> torch.Tensor:
    """Logits of a 2-block ``model`` (same weights for every ``fix``) built with ``<scheme>_fixed_grid=fix``."""
    scheme = next(n for n, m in FIX_MODELS.items() if m == model)
    torch.manual_seed(0)
    net = cpvt.create_model(model, depth=2, **{f"{scheme}_fixed_grid": fix}).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        return net(torch.randn(2, 3, *size))


def test_each_scheme_declares_its_fixes_and_takes_the_option_exactly_then():
    assert {n: ENCODINGS[n].GRID_FIXES for n in WITH_FIXES} == {
        "sincos": ("interpolate",), "rope": ("interpolate",), "pape": ("interpolate",), "convffn": ("dilate",),
        "peg": ("resample", "dilate", "dilate_smooth", "dilate_border", "dilate_content")}
    assert set(FIX_MODELS) == set(WITH_FIXES)  # the whole-model test below covers every scheme with fixes
    for name, cls in ENCODINGS.items():
        options = encoding_options(name)
        assert (f"{name}_fixed_grid" in options) == bool(cls.GRID_FIXES)
        assert options.get(f"{name}_fixed_grid") is None  # off by default
        assert cls.AUTO_FIX is None or cls.AUTO_FIX in cls.GRID_FIXES
    assert {n: c.AUTO_FIX for n, c in ENCODINGS.items() if c.AUTO_FIX} == {
        "peg": "dilate", "convffn": "dilate", "rope": "interpolate", "sincos": "interpolate", "pape": "interpolate"}


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_an_unsupported_fix_is_refused_with_an_error_naming_the_option(name):
    cls = ENCODINGS[name]
    others = sorted({f for c in ENCODINGS.values() for f in c.GRID_FIXES} - set(cls.GRID_FIXES))  # another scheme's
    bad = ["stretch", "Dilate", 1, 0, 2.0, ("dilate",)] + others + ([] if "resample" in cls.GRID_FIXES else [True])
    for value in bad:
        with pytest.raises(ValueError, match=f"^{name}_fixed_grid") as err:
            cls.check_grid_fix(value)
        assert str(err.value).endswith(f"got {value!r}")
        assert str(cls.GRID_FIXES) in str(err.value) or not cls.GRID_FIXES  # it lists what the option takes
    if cls.GRID_FIXES:  # the same error through the user's option
        with pytest.raises(ValueError, match=rf"^{name}_fixed_grid must be None \(no fix\) or one of .*; got 'stretch'$"):
            build_position_encodings(name, FIX_SHAPE, **{f"{name}_fixed_grid": "stretch"})


@pytest.mark.parametrize("name", WITH_FIXES)
def test_every_declared_fix_is_accepted_and_applies_only_off_the_training_grid(name, monkeypatch):
    for fix in ENCODINGS[name].GRID_FIXES:
        (enc,) = build_position_encodings(name, FIX_SHAPE, **{f"{name}_fixed_grid": fix})
        assert enc.fixed_grid == fix and enc.train_grid == (4, 4)
        assert enc.grid_fix_for(Grid(4, 4, 1)) is None  # the training grid: the trained scheme, untouched
        assert [enc.grid_fix_for(Grid(h, w, 1)) for h, w in ((8, 8), (4, 6), (3, 4))] == [fix] * 3
        with monkeypatch.context() as m:  # exporting: the sizes are symbolic, so the general path serves every grid
            m.setattr("cpvt.pos.base.is_exporting", lambda: True)
            assert enc.grid_fix_for(Grid(4, 4, 1)) == fix
    (plain,) = build_position_encodings(name, FIX_SHAPE)
    assert plain.fixed_grid is None and plain.grid_fix_for(Grid(8, 8, 1)) is None


@pytest.mark.parametrize("name,fix", [(n, f) for n in WITH_FIXES for f in ENCODINGS[n].GRID_FIXES])
def test_every_fix_is_the_plain_model_at_the_training_size_and_acts_above_it(name, fix):
    """Whole models: on the training grid (32x32 images, 8x8 tokens) each fix gives exactly the plain model's
    logits; at 48x64 (non-square) it changes them, so the option reaches the scheme."""
    model = FIX_MODELS[name]
    assert torch.equal(fixed_grid_logits(model, (32, 32), fix), fixed_grid_logits(model, (32, 32)))
    assert not torch.allclose(fixed_grid_logits(model, (48, 64), fix), fixed_grid_logits(model, (48, 64)))


def test_the_legacy_boolean_spellings_still_work():
    """``peg_fixed_grid=True`` is ``"resample"`` (the option's first form), False is off, for every scheme."""
    assert PEG(shape(), fixed_grid=True).fixed_grid == "resample"
    assert PEG(shape(), fixed_grid=False).fixed_grid is None and PEG(shape()).fixed_grid is None
    assert torch.equal(fixed_grid_logits("cpvt_micro", (48, 64), True), fixed_grid_logits("cpvt_micro", (48, 64), "resample"))
    assert torch.equal(fixed_grid_logits("cpvt_micro", (48, 64), False), fixed_grid_logits("cpvt_micro", (48, 64)))
    for name in WITH_FIXES:
        assert build_position_encodings(name, FIX_SHAPE, **{f"{name}_fixed_grid": False})[0].fixed_grid is None


def test_the_training_grid_is_recorded_once_by_the_base_class():
    for name in ENCODINGS:
        (enc,) = build_position_encodings(name, shape(grid=(4, 6), mlp_hidden=32))
        assert enc.train_grid == (4, 6), name
        assert not {"ref", "base_grid"} & set(vars(enc)), name  # no scheme keeps a copy of its own
    # a pyramid builds each stage's schemes for that stage's grid
    assert [e.train_grid for e in cpvt.create_model("twins_pcpvt_micro").position_encodings()] == [(16, 16), (8, 8), (4, 4)]
