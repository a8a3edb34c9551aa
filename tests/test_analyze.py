"""`cpvt analyze`: the defining properties of each measurement, on micro models with random weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cpvt.cli import main
from cpvt.study.analyze import (
    attention_analysis,
    attention_maps,
    equivariance,
    image_batch,
    load_subject,
    normalise,
    peg_response,
    pooled_agreement,
    position_probe,
    spearman,
)


def _images(n=8, size=32, seed=0):
    return image_batch("real", n, size, seed, "synthetic")


def test_circular_peg_without_prefix_or_ape_is_exactly_equivariant_to_whole_patch_rolls():
    peg = load_subject("cpvt_micro_gap:peg_padding=circular")
    ape = load_subject("deit_micro")
    x = normalise(_images(), peg)
    r_peg = equivariance(peg, x, [4, 8, 12], mode="circular")
    r_ape = equivariance(ape, x, [4, 8, 12], mode="circular")
    for d in ("4", "8", "12"):
        assert max(r_peg["error"][d]) < 1e-5
        assert r_peg["agreement"][d] == 100.0
        assert max(r_ape["error"][d]) > 1e-2  # the APE is added to fixed grid cells, so shifting content changes tokens
    # with zero padding the border signal breaks circular equivariance after the PEG
    zeros = equivariance(load_subject("cpvt_micro_gap"), x, [4], mode="circular")
    assert zeros["error"]["4"][0] < 1e-5 and zeros["error"]["4"][-1] > 1e-2


def test_sub_patch_shifts_break_equivariance_even_without_position_encoding():
    nope = load_subject("deit_micro_nope")
    r = equivariance(nope, normalise(_images(), nope), [1, 4], mode="canvas")
    assert max(r["error"]["4"]) < 1e-5  # whole patches on a canvas: the token set only moves
    assert r["error"]["1"][0] > 1e-2  # a 1 px shift changes every patch's content


def test_probe_reads_position_from_an_ape_but_not_from_no_encoding_on_constant_images():
    images = {"constant": (image_batch("constant", 16, 32, 0), image_batch("constant", 16, 32, 1))}
    ape = position_probe(load_subject("deit_micro"), images)["constant"]
    nope = position_probe(load_subject("deit_micro_nope"), images)["constant"]
    assert max(ape["spearman"]) > 0.8
    assert max(abs(v) for v in nope["spearman"]) < 0.05  # every token identical: nothing to read
    assert min(ape["mae"]) < min(nope["mae"])


def test_spearman_is_rank_correlation():
    t = torch.arange(10.0)
    assert spearman(t**3, t).item() == pytest.approx(1.0)
    assert spearman(-t, t).item() == pytest.approx(-1.0)
    assert spearman(torch.ones(10), t).item() == 0.0
    # ties share their average rank: a two-level prediction of a ramp is scored as such, not by tie order
    two_level = (t >= 5).float()
    expected = torch.corrcoef(torch.stack([torch.tensor([2.0] * 5 + [7.0] * 5), t]))[0, 1]
    assert spearman(two_level, t).item() == pytest.approx(expected.item(), abs=1e-6)
    # ... so the score does not depend on the order the tied values come in: the same pairs, reordered, score the same
    for order in (torch.arange(9, -1, -1), torch.randperm(10, generator=torch.Generator().manual_seed(0))):
        assert spearman(two_level[order], t[order]).item() == pytest.approx(expected.item(), abs=1e-6)
    # and values within 1e-5 (relative) of each other are tied: float noise does not rank them
    assert spearman(two_level + 1e-7 * t.flip(0), t).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("name", ["deit_micro", "cpvt_micro_gap", "deit_micro_rpe"])
def test_attention_maps_sum_to_one_per_query(name):
    s = load_subject(name)
    x = normalise(_images(4), s)
    maps = attention_maps(s, x)
    assert len(maps) == len(s.model.blocks)
    for a in maps:
        assert a.shape[-1] == a.shape[-2] == 64 + s.model.num_prefix
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5, rtol=0)
    r = attention_analysis(s, x)
    assert r["row_sums_max_error"] < 1e-5
    # the mean distance is the attention-weighted distance in px from each patch query to the patch keys (the
    # prefix left out), averaged over queries and images: recomputed here from the maps and the 8x8 grid of 4 px patches
    centres = [(4 * (i // 8), 4 * (i % 8)) for i in range(64)]
    dist = torch.tensor([[math.dist(a, b) for b in centres] for a in centres])
    pre = s.model.num_prefix
    for a, per_head in zip(maps, r["mean_distance"]):
        patch = a[:, :, pre:, pre:]
        expected = (patch / patch.sum(-1, keepdim=True) * dist).sum(-1).mean(dim=(0, 2))
        assert per_head == pytest.approx(expected.tolist(), rel=1e-5)
    assert all(0 < d < 28 * math.sqrt(2) for row in r["mean_distance"] for d in row)  # 39.6 px: the farthest centres
    # the attention hooks are switched off afterwards: the fast path is back
    assert all(not blk.attn.keep_attn and blk.attn.last_attn is None for blk in s.model.blocks)


def test_uniform_attention_has_the_uniform_reference_distance():
    """With zero query weights every query attends uniformly: its distance is the reported reference."""
    s = load_subject("deit_micro_nope")
    for blk in s.model.blocks:
        with torch.no_grad():
            blk.attn.qkv.weight[: blk.attn.qkv.weight.shape[0] // 3].zero_()
            blk.attn.qkv.bias[: blk.attn.qkv.weight.shape[0] // 3].zero_()
    r = attention_analysis(s, normalise(_images(2), s))
    assert r["uniform_distance"] == pytest.approx(r["mean_distance"][0][0], rel=1e-3)
    assert 15 < r["uniform_distance"] < 18  # about 0.52 of the 8-token side, 4 px patches


def test_peg_on_a_constant_image_shows_the_zero_padding_border_and_nothing_with_circular_padding():
    const = image_batch("constant", 1, 32, 0)
    zeros = load_subject("cpvt_micro_gap")
    circ = load_subject("cpvt_micro_gap:peg_padding=circular")
    z = torch.tensor(peg_response(zeros, normalise(const, zeros))["0@0"]["map"])
    c = torch.tensor(peg_response(circ, normalise(const, circ))["0@0"]["map"])
    interior = z[1:-1, 1:-1]
    assert (interior - interior[0, 0]).abs().max() < 1e-4 * interior.abs().max()  # uniform inside
    border = torch.cat([z[0], z[-1], z[:, 0], z[:, -1]])
    assert (border - interior[0, 0]).abs().min() > 1e-3  # every border token differs
    assert (c - c[0, 0]).abs().max() < 1e-4 * c.abs().max()  # circular: uniform everywhere


def test_cli_writes_plots_and_json_for_several_models(tmp_path: Path, capsys):
    for kind, files in [("equivariance", ["equivariance.png"]), ("position", ["position_curves.png", "position_maps.png"]),
                        ("attention", ["attention_distance.png", "attention_maps.png"]), ("peg", ["peg_response.png"])]:
        out = tmp_path / kind
        assert main(["analyze", kind, "deit_micro", "cpvt_micro:peg_padding=circular", "--images", "8",
                     "--out", str(out)]) == 0
        for f in files:
            assert (out / f).stat().st_size > 1000
        data = json.loads((out / f"{kind}.json").read_text())
        assert data["meta"]["kind"] == kind
        expected = {"cpvt_micro:peg_padding=circular"} if kind == "peg" else {"deit_micro", "cpvt_micro:peg_padding=circular"}
        assert set(data["results"]) == expected
    printed = capsys.readouterr().out
    assert "skipping deit_micro: it has no PEG" in printed


def test_analyze_errors_are_one_clear_line(capsys, tmp_path: Path):
    assert main(["analyze", "peg", "deit_micro", "--out", str(tmp_path)]) == 2
    assert "has a PEG" in capsys.readouterr().err
    assert main(["analyze", "attention", "no_such_model", "--out", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    assert main(["analyze", "attention", "deit_micro", "--img-size", "30", "--out", str(tmp_path)]) == 2
    capsys.readouterr()
    assert main(["analyze", "position", "cvt_micro", "--out", str(tmp_path)]) == 2
    assert "pyramid models" in capsys.readouterr().err


def test_trained_run_is_analysed_from_its_folder(tmp_path: Path):
    from cpvt.train.config import resolve_config
    from cpvt.train.engine import train

    cfg = resolve_config("demo", {"model": "cpvt_micro", "out": str(tmp_path / "run")},
                         ["epochs=1", "train_limit=64", "val_limit=32", "batch_size=32", "model.depth=2",
                          "model.embed_dim=16"])
    train(cfg)
    assert main(["analyze", "peg", str(tmp_path / "run"), "--images", "4", "--out", str(tmp_path / "a")]) == 0
    data = json.loads((tmp_path / "a" / "peg.json").read_text())
    assert data["meta"]["data"] == "synthetic"
    [label] = data["results"]
    assert "cpvt_micro" in label
    # a run folder carries its own options, like a registry name
    run = str(tmp_path / "run")
    assert main(["analyze", "scale", run, f"{run}:peg_fixed_grid=dilate", "--images", "4",
                 "--out", str(tmp_path / "s")]) == 0
    labels = list(json.loads((tmp_path / "s" / "scale.json").read_text())["results"])
    assert len(labels) == 2 and labels[1] == labels[0] + " peg_fixed_grid=dilate"


def test_pooled_agreement_is_one_for_a_blown_up_map_and_zero_for_an_orthogonal_one():
    base = torch.randn(2, 8, 4, 4)
    big = base.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.allclose(pooled_agreement(base, big), torch.ones(2, 4, 4), atol=1e-6)
    other = torch.zeros(2, 8, 8, 8)
    other[:, 0] = 1.0
    flat = base.clone()
    flat[:, 0] = 0.0
    assert pooled_agreement(flat, other).abs().max() < 1e-6


def test_scale_shows_a_dilated_peg_keeping_its_code_at_twice_the_grid(tmp_path: Path):
    out = tmp_path / "scale"
    assert main(["analyze", "scale", "cpvt_micro", "cpvt_micro:peg_fixed_grid=dilate", "--images", "8",
                 "--img-sizes", "48,64", "--out", str(out)]) == 0
    assert (out / "scale.png").stat().st_size > 1000
    res = json.loads((out / "scale.json").read_text())["results"]
    plain, dilated = res["cpvt_micro"], res["cpvt_micro:peg_fixed_grid=dilate"]
    depth = len(load_subject("cpvt_micro").model.blocks)
    for r in (plain, dilated):
        assert r["sizes"] == [48, 64] and set(r["content"]) == {"detail", "upsampled"}
        assert len(r["content"]["detail"]["64"]["cosine"]) == 1 + depth  # input to block 0, then each block
        assert 0 <= r["content"]["detail"]["64"]["top1"] <= 100
    # before the PEG the two are the same model; from the PEG on, the dilated one agrees more with 1x at 2x
    p, d = plain["content"]["upsampled"]["64"]["cosine"], dilated["content"]["upsampled"]["64"]["cosine"]
    assert p[0] == pytest.approx(d[0])
    assert d[1] > p[1] + 0.01


def test_scale_needs_sizes_above_the_training_size(capsys, tmp_path: Path):
    assert main(["analyze", "scale", "cpvt_micro", "--img-sizes", "32", "--out", str(tmp_path)]) == 2
    assert "must be larger than the model's size 32" in capsys.readouterr().err


def test_position_probe_splits_a_split_smaller_than_images_in_half(tmp_path: Path, capsys):
    """A data split with fewer images than --images: the real-image probe fits on one half and scores the other
    (it used to score an empty half and fail in torch.cat)."""
    from test_inputs import shapes_folder

    data = shapes_folder(tmp_path / "data", per_class=1, val_per_class=2, size=32, classes=3)  # 6 val images
    assert main(["analyze", "position", "cpvt_micro", "--data", str(data), "--images", "64",
                 "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    [result] = json.loads((tmp_path / "a" / "position.json").read_text())["results"].values()
    assert len(result["real"]["spearman"]) == len(result["constant"]["spearman"])
