"""SyntheticShapes: determinism, resolution consistency, position-dependent labels, the Split interface."""

import pytest
import torch
import torch.nn.functional as F

from cpvt.data.base import Split
from cpvt.data.synthetic import (
    CLASSES,
    MARGIN,
    SHAPES,
    SyntheticShapes,
    make_scene_params,
    mirror_scene_params,
    render_scene_params,
)


def test_metadata():
    ds = SyntheticShapes()
    assert ds.name == "synthetic"
    assert ds.splits == ("train", "val")
    assert ds.position_free_ceiling == 0.5
    assert len(ds.classes) == 10 and len(set(ds.classes)) == 10
    assert ds.classes[:2] == ["disc_left", "disc_right"]
    assert ds.classes == CLASSES
    assert all(c.rsplit("_", 1)[0] in SHAPES and c.endswith(("_left", "_right")) for c in ds.classes)


def test_deterministic_by_seed_split_index():
    a, b, c = SyntheticShapes(seed=1), SyntheticShapes(seed=1), SyntheticShapes(seed=2)
    idx = torch.arange(64)
    img = a.render("train", idx, 32)
    assert torch.equal(img, b.render("train", idx, 32))
    assert torch.equal(a.labels("train", idx), b.labels("train", idx))
    assert not torch.equal(img, c.render("train", idx, 32))
    assert not torch.equal(a.labels("train", idx), c.labels("train", idx))
    assert not torch.equal(img, a.render("val", idx, 32))  # splits are different scenes


def test_subset_matches_full_range():
    ds = SyntheticShapes(seed=0)
    full = ds.render("train", range(10), 32)
    assert torch.equal(ds.render("train", [5, 6], 32), full[5:7])
    assert torch.equal(ds.render("train", torch.tensor([7, 2]), 32), full[[7, 2]])
    assert torch.equal(ds.render("train", 3, 32), full[3:4])
    assert torch.equal(ds.labels("train", [5, 6]), ds.labels("train", range(10))[5:7])
    p_full, p_sub = ds.scenes("train", range(10)), ds.scenes("train", [6])
    for k, v in p_sub.items():
        assert torch.equal(v[0], p_full[k][6]), k


@pytest.mark.parametrize("small,factor", [(32, 2), (32, 3), (48, 2)])
def test_same_scene_at_every_resolution(small, factor):
    ds = SyntheticShapes(seed=3, noise=0.0)
    idx = torch.arange(200)
    lo = ds.render("train", idx, small).float()
    hi = ds.render("train", idx, small * factor).float()
    diff = (F.avg_pool2d(hi, factor) - lo).abs()
    # measured: overall mean ~0.12, worst image ~0.35 (anti-aliasing differences only)
    assert diff.mean() < 1.0
    assert diff.mean(dim=(1, 2, 3)).max() < 2.0


def test_noise_is_deterministic_and_mild():
    noisy, clean = SyntheticShapes(seed=4), SyntheticShapes(seed=4, noise=0.0)
    idx = torch.arange(32)
    a = noisy.render("train", idx, 32)
    assert torch.equal(a, noisy.render("train", idx, 32))
    d = (a.float() - clean.render("train", idx, 32).float()).abs()
    assert 2.0 < d.mean() < 10.0 and d.max() <= 14
    with pytest.raises(ValueError):
        SyntheticShapes(noise=-0.1)


def test_mirroring_swaps_half_and_flips_image():
    params = make_scene_params(5, 0, torch.arange(300))
    mirrored = mirror_scene_params(params)
    assert torch.equal(mirrored["label"], params["label"] ^ 1)  # x_left <-> x_right
    assert torch.equal(mirrored["shape"], params["shape"])
    for size in (32, 48):
        img = render_scene_params(params, size).float()
        img_m = render_scene_params(mirrored, size).float()
        diff = (img_m - torch.flip(img, dims=[-1])).abs()
        assert diff.max() <= 1.0 and diff.mean() < 0.01


def test_label_half_matches_centre_and_never_crosses_midline():
    ds = SyntheticShapes(seed=6, train_zoom=(1, 1))  # scenes as drawn (zoomed ones: the test below)
    p = ds.scenes("train", torch.arange(5000))
    left = p["cx"] < 0.5
    assert torch.equal(p["half"] == 0, left)
    assert torch.equal(p["label"] % 2, p["half"])
    assert torch.equal(p["label"] // 2, p["shape"])
    eps = 1e-5
    assert (p["cx"][left] + p["r"][left] <= 0.5 - MARGIN + eps).all()
    assert (p["cx"][~left] - p["r"][~left] >= 0.5 + MARGIN - eps).all()
    assert (p["cx"] - p["r"] >= MARGIN - eps).all() and (p["cx"] + p["r"] <= 1 - MARGIN + eps).all()
    assert (p["cy"] - p["r"] >= MARGIN - eps).all() and (p["cy"] + p["r"] <= 1 - MARGIN + eps).all()


def test_distractors_are_not_confusable():
    p = make_scene_params(7, 0, torch.arange(5000))
    assert p["dr"].max() <= p["r"].min() / 2 + 1e-6  # clearly smaller than any main shape
    n = p["dmask"].sum(1)
    assert n.min() >= 2 and n.max() <= 4
    assert ((p["dcolor"] - p["color"][:, None]).abs() >= 0.25 - 1e-5).all()
    assert ((p["bg"] - p["color"]).abs() >= 0.3 - 1e-5).all()


def test_main_shape_is_drawn_where_the_params_say():
    ds = SyntheticShapes(seed=8, noise=0.0)
    size = 64
    p = ds.scenes("val", torch.arange(100))
    img = ds.render("val", torch.arange(100), size)
    solid = p["shape"] != SHAPES.index("ring")  # a ring's centre is a hole
    i = (p["cy"] * size).long().clamp(max=size - 1)
    j = (p["cx"] * size).long().clamp(max=size - 1)
    centre = img[torch.arange(100), :, i, j].float()
    expect = (p["color"] * 255).round()
    assert ((centre - expect).abs()[solid] <= 1).all()


def test_classes_roughly_balanced():
    labels = SyntheticShapes(seed=0).labels("train", torch.arange(2000))
    counts = torch.bincount(labels, minlength=10)
    assert len(counts) == 10 and (counts > 0).all()
    assert counts.min() >= 140 and counts.max() <= 260  # expected 200 each


def test_split_interface():
    ds = SyntheticShapes(seed=0, train_size=300, val_size=50)
    s = ds.split("train", 32)
    assert isinstance(s, Split) and s.name == "train"
    assert s.images.dtype == torch.uint8 and s.images.shape == (300, 3, 32, 32)
    assert s.labels.dtype == torch.int64 and s.labels.shape == (300,)
    assert s.classes == ds.classes and s.num_classes == 10 and s.size == 32
    assert torch.equal(s.labels, ds.labels("train", range(300)))
    assert torch.equal(s.images[100:110], ds.render("train", range(100, 110), 32))
    v = ds.split("val", 48, mode="eval", crop_pct=0.9)  # mode / crop_pct ignored
    assert v.images.shape == (50, 3, 48, 48)
    assert torch.equal(v.images, ds.split("val", 48).images)
    lim = ds.split("train", 32, limit=100)
    assert len(lim) == 100 and torch.equal(lim.images, s.images[:100])
    assert len(ds.split("val", 32, limit=1000)) == 50


def test_errors():
    ds = SyntheticShapes(train_size=10, val_size=5)
    with pytest.raises(ValueError, match="unknown split"):
        ds.split("test", 32)
    with pytest.raises(ValueError, match="unknown split"):
        ds.render("test", [0], 32)
    with pytest.raises(ValueError, match="at least 8"):
        ds.split("train", 4)
    with pytest.raises(ValueError, match="out of range"):
        ds.render("val", [5], 32)
    with pytest.raises(ValueError):
        ds.labels("train", [0.5])
    with pytest.raises(ValueError, match="limit"):
        ds.split("train", 32, limit=0)


def test_training_scenes_are_zoomed_about_the_centre_keeping_the_label():
    """Zoom in [1, 2] about the centre: shapes grow, move outward, stay mostly inside and keep their half."""
    ds = SyntheticShapes(seed=3)
    idx = torch.arange(3000)
    zoomed = ds.scenes("train", idx)
    plain = make_scene_params(3, 0, idx)  # the same scenes before the zoom
    z = zoomed["zoom"]
    assert (z >= 1 - 1e-6).all() and (z <= 2 + 1e-6).all() and z.mean() > 1.25
    assert torch.equal(zoomed["label"], plain["label"])
    assert torch.allclose(zoomed["r"], z * plain["r"])
    assert torch.allclose(zoomed["cx"] - 0.5, z * (plain["cx"] - 0.5), atol=1e-6)
    eps = 1e-5
    for c in ("cx", "cy"):  # at most a quarter of the box is outside the image
        half = 0.5 * zoomed["r"]
        assert (zoomed[c] - half >= -eps).all() and (zoomed[c] + half <= 1 + eps).all()
    left = zoomed["cx"] < 0.5
    assert (zoomed["cx"][left] + zoomed["r"][left] <= 0.5 - MARGIN + eps).all()
    assert torch.equal(ds.scenes("val", idx[:2000])["zoom"], torch.ones(2000))  # test scenes are not zoomed
    unzoomed = SyntheticShapes(seed=3, train_zoom=(1, 1), noise=0.0)
    assert torch.equal(unzoomed.render("train", idx[:8], 32), render_scene_params(make_scene_params(3, 0, idx[:8]), 32))
    with pytest.raises(ValueError, match="zoom"):
        SyntheticShapes(train_zoom=(2, 1))


def test_shape_colors_give_each_shape_its_own_colour_and_keep_the_scenes():
    from cpvt.data.synthetic import SHAPE_COLOR_JITTER, SHAPE_COLORS, SyntheticShapes

    plain, coloured = SyntheticShapes(), SyntheticShapes(shape_colors=True)
    a, b = plain.scenes("val", range(200)), coloured.scenes("val", range(200))
    for key in ("label", "cx", "cy", "r", "dx", "dmask"):  # the same scenes, only the colours differ
        assert torch.equal(a[key], b[key]), key
    assert ((b["color"] - SHAPE_COLORS[b["shape"]]).abs() <= SHAPE_COLOR_JITTER + 1e-6).all()
    assert not ((a["color"] - SHAPE_COLORS[a["shape"]]).abs() <= SHAPE_COLOR_JITTER + 1e-6).all()


def test_data_options_reach_the_synthetic_source_and_bad_ones_are_named(tmp_path):
    from cpvt.data.named import open_source

    assert open_source("synthetic", options={"shape_colors": True}).shape_colors
    with pytest.raises(ValueError, match="unknown option.*colours.*valid: .*shape_colors"):
        open_source("synthetic", options={"colours": True})
    with pytest.raises(ValueError, match="for the built-in 'synthetic' data"):
        open_source(str(tmp_path), options={"shape_colors": True})
