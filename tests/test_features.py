"""Feature maps with timm's contract: ``forward_intermediates``, ``prune_intermediate_layers`` and
``create_model(name, features_only=True, out_indices=...)`` (cpvt.models.features).

The default suite runs every micro model (every encoding, every pyramid family) at full micro size; the
registry-wide shape test (every name, blocks cut to the fewest, true widths, strides and encodings) is
``slow``. The ONNX checks need the optional extra and skip without it (conftest's ``need_onnx``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import need_onnx, small_sizes

import cpvt
from cpvt.checkpoint import CheckpointError, save_checkpoint
from cpvt.models.features import FeatureGetter, feature_take_indices
from cpvt.pos import Grid

MICRO = cpvt.list_models("*_micro*")
PYRAMIDS = ("twins_pcpvt_micro", "twins_svt_micro", "cvt_micro")
SLIM = dict(depth=2, embed_dim=32, num_heads=4)  # a two-block micro ViT (head width 8: RoPE needs a multiple of 4)
PYRAMID_SLIM = dict(depths=(1, 1, 1))


def build(name: str, **overrides) -> torch.nn.Module:
    """A seeded model with every parameter moved off its initial value (zero biases, identity norms), so
    every path shows in its outputs."""
    torch.manual_seed(0)
    model = cpvt.create_model(name, **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def shallow(name: str) -> dict:
    """Overrides that keep a registry model's widths, strides and encodings but the fewest blocks: one per
    pyramid stage; for a ViT two, or as many as its PEG positions need."""
    args = cpvt.model_args(name)
    if "depths" in args:
        return {"depths": (1,) * len(args["depths"])}
    return {"depth": 2 + max(args.get("peg_positions", (0,)))}


def num_maps(model) -> int:
    return len(model.stages) if hasattr(model, "stages") else len(model.blocks)


def check_shapes(model) -> None:
    """At two square sizes and a non-square one: one map per block / stage, each (B, C_i, H / r_i, W / r_i)
    as ``feature_info`` says (``NLC``: the same tokens), and ``final`` is ``forward_features``."""
    info = model.feature_info
    assert len(info) == num_maps(model)
    for h, w in small_sizes(model):
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            final, maps = model.forward_intermediates(x)
            tokens = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
            assert torch.equal(final, model.forward_features(x))
        expected = [(2, i["num_chs"], h // i["reduction"], w // i["reduction"]) for i in info]
        assert [tuple(m.shape) for m in maps] == expected, (model.model_name, h, w)
        assert all(torch.equal(t, Grid.from_map(m)) for t, m in zip(tokens, maps))
    assert info[-1]["reduction"] == model.patch_size and info[-1]["num_chs"] == model.embed_dim


# -- shapes -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MICRO)
def test_micro_models_give_one_map_per_block_or_stage_at_any_size(name):
    check_shapes(build(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", cpvt.list_models())
def test_every_registry_model_gives_its_maps(name):
    torch.manual_seed(0)
    check_shapes(cpvt.create_model(name, **shallow(name)).eval())


# -- which stream a map is ------------------------------------------------------------------------------------------
def _inputs_of(modules):
    """Forward pre-hooks that record the first input of each module (what it reads)."""
    seen = [[] for _ in modules]
    handles = [m.register_forward_pre_hook(lambda _, args, s=s: s.append(args[0])) for m, s in zip(modules, seen)]
    return seen, handles


@pytest.mark.parametrize("name", ["cpvt_micro", "cpvt_micro_gap_plus", "deit_micro", "deit_micro_convffn"])
def test_vit_map_is_the_stream_the_next_block_reads(name):
    """Map i is block i's output after the between-block hooks (the PEG): what block i + 1 reads, and for the
    last block what the final norm reads; where no encoding acts between blocks, the bare block output."""
    model = build(name)
    x = torch.randn(2, 3, 24, 40)
    grid = Grid(24 // 4, 40 // 4, model.num_prefix)
    seen, handles = _inputs_of([*model.blocks[1:], model.norm])
    outputs = []
    handles.append(model.blocks[0].register_forward_hook(lambda _, __, out: outputs.append(out)))
    try:
        with torch.no_grad():
            maps = model.forward_intermediates(x, intermediates_only=True)
            model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    read = [grid.to_map(grid.split(s[-1])[1]) for s in seen]  # the forward_features pass
    assert len(maps) == len(read) == len(model.blocks)
    assert all(torch.equal(m, r) for m, r in zip(maps, read))
    block0 = grid.to_map(grid.split(outputs[-1])[1])
    assert torch.equal(maps[0], block0) == name.startswith("deit")  # a PEG acts after block 0 of every cpvt_*


@pytest.mark.parametrize("name", PYRAMIDS)
def test_pyramid_map_is_the_stage_output_the_next_stage_embeds(name):
    model = build(name)
    x = torch.randn(2, 3, 32, 48)
    seen, handles = _inputs_of([s.patch_embed for s in model.stages[1:]] + [model.norm])
    try:
        with torch.no_grad():
            final, maps = model.forward_intermediates(x)
            normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
    finally:
        for h in handles:
            h.remove()
    assert all(torch.equal(m, s[0]) for m, s in zip(maps, seen[:-1]))  # stage i + 1 embeds map i
    last = Grid(*maps[-1].shape[-2:], model.num_prefix)
    assert torch.equal(maps[-1], last.to_map(last.split(seen[-1][0])[1]))  # the last stage: the norm's input
    # norm=True: the final norm on the last stage's map only (timm's Twins); its class token is dropped
    assert all(torch.equal(a, b) for a, b in zip(normed[:-1], maps[:-1]))
    assert torch.equal(normed[-1], last.to_map(last.split(final)[1]))


def test_vit_norm_applies_the_final_norm_to_every_map():
    model = build("cpvt_micro")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        normed = model.forward_intermediates(x, norm=True, output_fmt="NLC", intermediates_only=True)
        assert all(torch.equal(n, model.norm(p)) for n, p in zip(normed, plain))


# -- indices -------------------------------------------------------------------------------------------------------
def test_take_indices():
    assert feature_take_indices(8) == (list(range(8)), 7)
    assert feature_take_indices(8, 3) == ([5, 6, 7], 7)
    assert feature_take_indices(8, [0, -1, 3]) == ([0, 3, 7], 7)  # network order, as the maps come
    assert feature_take_indices(8, (-8, 2, 2)) == ([0, 2], 2)
    for bad, where in ((0, r"1 to 8"), (9, r"1 to 8"), ([8], r"0 to 7"), ([-9], r"-8 to -1"), ([], "empty")):
        with pytest.raises(ValueError, match=where):
            feature_take_indices(8, bad)


@pytest.mark.parametrize("name", ["cpvt_micro", "twins_svt_micro"])
def test_indices_select_maps_and_intermediates_only_stops_early(name):
    model = build(name)
    n = num_maps(model)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        final, every = model.forward_intermediates(x)
        for indices, expect in ((None, range(n)), (2, [n - 2, n - 1]), ([0, -1], [0, n - 1]), ([-2], [n - 2])):
            got_final, got = model.forward_intermediates(x, indices=indices)
            assert torch.equal(got_final, final) and len(got) == len(expect)
            assert all(torch.equal(g, every[i]) for g, i in zip(got, expect))
        # intermediates_only: the list alone, and nothing after the last index runs
        later = [s.patch_embed for s in model.stages[1:]] if hasattr(model, "stages") else model.blocks[1:]
        calls = []
        handles = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in later]
        try:
            only = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        finally:
            for h in handles:
                h.remove()
        assert isinstance(only, list) and len(only) == 1 and torch.equal(only[0], every[0]) and not calls
    with pytest.raises(ValueError, match=rf"out of range \(0 to {n - 1}"):
        model.forward_intermediates(x, indices=[n])
    with pytest.raises(ValueError, match=rf"out of range \(1 to {n}\)"):
        model.forward_intermediates(x, indices=n + 1)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


# -- features_only -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cpvt_micro", "deit_micro_rope", *PYRAMIDS])
def test_features_only_model_lists_maps_its_feature_info_describes(name):
    model = build(name)
    features = cpvt.create_model(name, features_only=True)
    assert isinstance(features, FeatureGetter)
    assert (features.model_name, features.model_args, features.pretrained_cfg) == (
        name, model.model_args, model.pretrained_cfg)
    # timm's defaults: a ViT's last 3 blocks, every stage of a pyramid
    expected = list(range(num_maps(model))) if name in PYRAMIDS else [5, 6, 7]
    assert features.out_indices == expected
    assert [i["index"] for i in features.feature_info] == expected
    features.load_state_dict(model.state_dict())  # a classifier's weights, head and all (strict)
    features.eval()
    for h, w in small_sizes(model):
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            maps = features(x)
            ref = model.forward_intermediates(x, indices=expected, intermediates_only=True)
        assert isinstance(maps, list) and all(torch.equal(a, b) for a, b in zip(maps, ref))
        assert [m.shape[1] for m in maps] == features.feature_info.channels()
        assert [(h // m.shape[2], w // m.shape[3]) for m in maps] == [(r, r) for r in features.feature_info.reduction()]


@pytest.mark.parametrize("name, out_indices, pruned", [
    ("cpvt_micro", (1, -7), [*(f"blocks.{i}." for i in range(2, 8)), "norm.", "head."]),
    ("twins_pcpvt_micro", 2, ["norm.", "head."]),  # norm=False: the final norm goes too
    ("twins_pcpvt_micro", [0], ["stages.1.", "stages.2.", "norm.", "head."]),
])
def test_features_only_prunes_what_its_maps_do_not_need(name, out_indices, pruned):
    full = build(name)
    features = cpvt.create_model(name, features_only=True, out_indices=out_indices)
    keys = set(features.state_dict())
    assert not any(k.startswith("model.") for k in keys)  # the backbone's own keys, no wrapper prefix
    assert keys == {k for k in full.state_dict() if not k.startswith(tuple(pruned))}
    assert keys | features.pruned_keys == set(full.state_dict())
    assert features.model.num_classes == 0 and isinstance(features.model.head, torch.nn.Identity)
    x = torch.randn(1, 3, 32, 48)
    features.load_state_dict(full.state_dict())
    with torch.no_grad():
        want = full.forward_intermediates(x, indices=out_indices, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(features.eval()(x), want))


def test_pretrained_classification_checkpoint_loads_into_a_features_model(tmp_path):
    clf = build("cpvt_micro", num_classes=7)
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        want = clf.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    save_checkpoint(tmp_path / "clf.safetensors", clf, config={}, classes=[str(i) for i in range(7)])
    torch.save(clf.state_dict(), tmp_path / "plain.pth")
    for source in ("clf.safetensors", "plain.pth"):
        features = cpvt.create_model("cpvt_micro", features_only=True, out_indices=[1, 3],
                                     pretrained=tmp_path / source, num_classes=7).eval()
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(features(x), want)), source
    # the pruned parts' keys are ignored, nothing else: a missing block tensor or a stray key still fails
    weights = clf.state_dict()
    broken = {k: v for k, v in weights.items() if k != "blocks.0.attn.qkv.weight"}
    with pytest.raises(RuntimeError, match="blocks.0.attn.qkv.weight"):
        features.load_state_dict(broken)
    with pytest.raises(RuntimeError, match="stray"):
        features.load_state_dict({**weights, "stray.weight": torch.zeros(1)})
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing: blocks\.0\.attn\.qkv\.weight"):
        cpvt.create_model("cpvt_micro", features_only=True, pretrained=tmp_path / "broken.pth", num_classes=7)
    # and a features model's own weights round-trip
    again = cpvt.create_model("cpvt_micro", features_only=True, out_indices=[1, 3])
    again.load_state_dict(features.state_dict())


def test_out_indices_needs_features_only():
    with pytest.raises(ValueError, match="features_only"):
        cpvt.create_model("cpvt_micro", out_indices=2)
    with pytest.raises(ValueError, match="out of range"):
        cpvt.create_model("cpvt_micro", features_only=True, out_indices=[8])


# -- compile and export --------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name, overrides", [  # compiling takes 15-25 s on 2 cores: the pyramid is slow
    ("cpvt_micro", SLIM), pytest.param("twins_pcpvt_micro", PYRAMID_SLIM, marks=pytest.mark.slow)])
def test_compiled_forward_intermediates_matches_eager(name, overrides):
    model = build(name, **overrides)
    torch._dynamo.reset()
    compiled = torch.compile(model.forward_intermediates)
    for h, w in [(32, 32), (24, 40)]:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            final, maps = model.forward_intermediates(x)
            c_final, c_maps = compiled(x)
        torch.testing.assert_close(c_final, final, atol=1e-5, rtol=0)
        assert len(c_maps) == len(maps)
        for a, b in zip(c_maps, maps):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def export_onnx(model: torch.nn.Module, path, example_size: int) -> None:
    """``torch.export`` with dynamic batch, height and width, then ONNX (``dynamo=True``), as cpvt.deploy.export
    does for a classifier. The example is large so that no grid of it is 0 or 1 (those sizes would be fixed)."""
    dyn = torch.export.Dim.DYNAMIC
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (torch.randn(2, 3, example_size, example_size),),
                                      dynamic_shapes={"x": {0: dyn, 2: dyn, 3: dyn}}, strict=False)
        torch.onnx.export(program, f=None, dynamo=True, verbose=False).save(str(path))


@pytest.mark.parametrize("name, overrides", [("cpvt_micro", SLIM), ("twins_pcpvt_micro", PYRAMID_SLIM)])
def test_features_only_model_exports_to_onnx_with_dynamic_size(name, overrides, tmp_path):
    need_onnx()
    import onnxruntime as ort
    torch.manual_seed(0)
    features = cpvt.create_model(name, features_only=True, out_indices=[0, -1], **overrides).eval()
    features.load_state_dict(build(name, **overrides).state_dict())  # weights off their init
    export_onnx(features, tmp_path / "features.onnx", example_size=64)
    session = ort.InferenceSession(str(tmp_path / "features.onnx"), providers=["CPUExecutionProvider"])
    for h, w in [(32, 32), (48, 48), (24, 40)]:  # none of them the traced size; one non-square
        x = torch.randn(3, 3, h, w)
        with torch.no_grad():
            want = features(x)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert [g.shape for g in got] == [tuple(m.shape) for m in want]
        for g, m in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), m, atol=1e-4, rtol=0)
