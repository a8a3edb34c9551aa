"""`cpvt predict` on a segmentation run: a label PNG (class index per pixel, at the image's own size) and an
overlay per image, the most frequent classes per image, unreadable files skipped and listed, --out required.
Classification predict is covered (unchanged) by tests/test_export.py and tests/test_inputs.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_inputs import tiny_run  # noqa: F401 - a fixture: a tiny classification run
from test_seg_train import CLASSES, COLOURS, H, W, _flags, mask_folder  # noqa: F401 - mask_folder: a fixture
from torch.nn import functional as F

import cpvt
from cpvt.cli import main
from cpvt.deploy.predict import predict, seg_palette

SIZES = {"wide.png": (37, 53), "big.jpg": (80, 120), "tall.png": (60, 28)}  # (H, W): none is the training 32x48


@pytest.fixture(scope="module")
def seg_run(mask_folder, tmp_path_factory) -> Path:  # noqa: F811 - the imported fixture, used here
    out = tmp_path_factory.mktemp("runs") / "seg"
    flags = _flags(mask_folder, out)
    flags[flags.index("--epochs") + 1] = "1"
    assert main(["train", *flags]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Frames like the training ones (a box and a bar on background) at other sizes, and an unreadable file."""
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for name, (h, w) in SIZES.items():
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 4 : w // 2] = 1
        mask[:, w - w // 5 :] = 2
        image = np.zeros((h, w, 3), np.uint8)
        for k, colour in COLOURS.items():
            image[mask == k] = colour
        image = np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def reference_labels(run: Path, file: Path, size: tuple[int, int]) -> np.ndarray:
    """The label map computed here: resize whole (bicubic) to ``size``, normalise, logits, upsample, argmax."""
    model, _, _ = cpvt.load_run(run)
    cfg = model.pretrained_cfg
    rgb = Image.open(file).convert("RGB")
    x = np.asarray(rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC), np.float32) / 255.0
    x = (x - np.array(cfg["mean"], np.float32)) / np.array(cfg["std"], np.float32)
    with torch.inference_mode():
        logits = model(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])
        assert logits.shape == (1, len(CLASSES), *size)
        up = F.interpolate(logits, size=(rgb.height, rgb.width), mode="bilinear", align_corners=False)
    return up.argmax(1)[0].numpy()


def test_cli_writes_label_maps_and_overlays_at_each_images_size(seg_run, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", str(seg_run), str(images), str(tmp_path / "missing.png"), "--out", str(out),
               "--json", str(tmp_path / "p.json")])
    printed = capsys.readouterr().out
    assert rc == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["task"] == "segmentation" and report["img_size"] == [H, W] and report["segmented"] == 3
    assert sorted(s["file"] for s in report["skipped"]) == sorted([str(images / "broken.png"),
                                                                   str(tmp_path / "missing.png")])
    by_name = {Path(r["file"]).name: r for r in report["results"]}
    assert set(by_name) == set(SIZES)
    for name, (h, w) in SIZES.items():
        r = by_name[name]
        assert (r["height"], r["width"]) == (h, w)
        labels_im = Image.open(r["labels"])
        assert labels_im.mode in ("P", "L") and labels_im.size == (w, h)  # one channel: class indices
        labels = np.asarray(labels_im)
        assert labels.shape == (h, w) and labels.min() >= 0 and labels.max() < len(CLASSES)
        overlay = Image.open(r["overlay"])
        assert overlay.mode == "RGB" and overlay.size == (w, h)
        counts = np.bincount(labels.ravel(), minlength=len(CLASSES))
        assert [t["index"] for t in r["top"]] == [int(c) for c in np.argsort(-counts, kind="stable") if counts[c]][:3]
        assert sum(t["share"] for t in r["top"]) == pytest.approx(1.0)
        assert r["top"][0]["share"] == pytest.approx(counts.max() / labels.size)
        assert Path(r["labels"]).parent == out and Path(r["labels"]).name == Path(name).stem + ".png"
        # the overlay is the image blended 50% with the palette
        rgb = np.asarray(Image.open(images / name).convert("RGB"), np.float64)
        if name.endswith(".png"):
            expected = np.rint(rgb * 0.5 + seg_palette(len(CLASSES))[labels] * 0.5)
            assert np.abs(np.asarray(overlay, np.float64) - expected).max() <= 1
    assert "size (HxW)" in printed and "37x53" in printed and "80x120" in printed
    assert "segmented 3 image(s) at 32x48" in printed and "skipped 2 unreadable" in printed
    assert f"skipped {images / 'broken.png'}" in printed


def test_label_map_is_the_argmax_of_the_upsampled_logits(seg_run, images, tmp_path):
    preds = predict(seg_run, [images / "wide.png", images / "big.jpg"], out_dir=tmp_path / "a", batch_size=1)
    for r in preds.results:
        got = np.asarray(Image.open(r["labels"]))
        assert np.array_equal(got, reference_labels(seg_run, Path(r["file"]), (H, W)))
    # --img-size HxW: the model runs at that size, the label map is still at the image's own size
    preds = predict(seg_run, [images / "wide.png"], img_size=(48, 64), out_dir=tmp_path / "b", batch_size=1)
    assert preds.img_size == (48, 64)
    got = np.asarray(Image.open(preds.results[0]["labels"]))
    assert got.shape == SIZES["wide.png"]
    assert np.array_equal(got, reference_labels(seg_run, images / "wide.png", (48, 64)))


def test_same_stem_in_two_folders_writes_two_files(seg_run, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.open(images / "wide.png").save(other / "wide.png")
    preds = predict(seg_run, [images / "wide.png", other / "wide.png"], out_dir=tmp_path / "o")
    assert [Path(r["labels"]).name for r in preds.results] == ["wide.png", "wide-1.png"]


def test_segmentation_predict_errors(seg_run, images, tmp_path, capsys):
    assert main(["predict", str(seg_run), str(images / "wide.png")]) == 2
    assert "is a segmentation run: pass --out DIR" in capsys.readouterr().err
    assert main(["predict", str(seg_run), str(images / "wide.png"), "--out", str(tmp_path / "o"),
                 "--img-size", "30x48"]) == 2
    assert "not valid for patch size" in capsys.readouterr().err
    assert main(["predict", str(seg_run), str(images / "broken.png"), "--out", str(tmp_path / "o")]) == 1
    assert "skipped 1 unreadable" in capsys.readouterr().out


def test_onnx_export_of_a_segmentation_run_predicts_the_same_labels(seg_run, images, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "seg.onnx"
    assert main(["export", str(seg_run), "--out", str(onnx)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    files = [images / "wide.png", images / "big.jpg"]
    ref = predict(seg_run, files, out_dir=tmp_path / "pt")
    got = predict(seg_run, files, out_dir=tmp_path / "ox", onnx=onnx)
    assert got.backend.startswith("onnxruntime")
    for a, b in zip(ref.results, got.results):
        la, lb = np.asarray(Image.open(a["labels"])), np.asarray(Image.open(b["labels"]))
        assert (la != lb).mean() < 1e-3  # logits equal to ~1e-5: only exact ties could flip


def test_classification_run_refuses_out_and_a_non_square_size(tiny_run, tmp_path, capsys):  # noqa: F811
    run, data = tiny_run
    rc = main(["predict", str(run), str(data / "val"), "--json", str(tmp_path / "p.json")])
    assert rc == 0 and "classified 6 image(s) at 16px with pytorch" in capsys.readouterr().out
    report = json.loads((tmp_path / "p.json").read_text())
    assert set(report) == {"backend", "img_size", "classified", "skipped_count", "results", "skipped"}
    assert main(["predict", str(run), str(data / "val"), "--out", str(tmp_path / "o")]) == 2
    assert "--out is for a segmentation run" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["predict", str(run), str(data / "val"), "--img-size", "16x24"]) == 2
    assert "a classification run predicts at a square size (N or NxN), got 16x24" in capsys.readouterr().err
    assert main(["predict", str(run), str(data / "val"), "--img-size", "24x24", "--topk", "1"]) == 0
    assert "at 24px" in capsys.readouterr().out


def test_a_window_runs_the_frame_as_crops_of_that_size(seg_run, images, tmp_path):
    """--window: the frame at --img-size is run as a sliding window of crops, overlapping logits averaged (the
    Canvas protocol's inference), the same labels as segment_eval.sliding_logits gives."""
    from cpvt.train.segment_eval import sliding_logits

    file = images / "big.jpg"  # 80x120
    preds = predict(seg_run, [file], img_size=(80, 120), out_dir=tmp_path / "win", window=(H, W))
    assert preds.backend.endswith(f"{H}x{W} windows")
    model, preprocess, _ = cpvt.load_run(seg_run)
    rgb = Image.open(file).convert("RGB")
    x = np.asarray(rgb.resize((120, 80), Image.Resampling.BICUBIC), np.uint8).transpose(2, 0, 1)[None]
    with torch.inference_mode():
        logits = sliding_logits(model, preprocess.normalise(x), (H, W), len(CLASSES))
    want = F.interpolate(logits, size=(80, 120), mode="bilinear", align_corners=False).argmax(1)[0].numpy()
    got = np.asarray(Image.open(preds.results[0]["labels"]))
    assert (got == want).mean() > 0.999  # bicubic resizes may round a pixel differently
    whole = predict(seg_run, [file], img_size=(80, 120), out_dir=tmp_path / "whole")
    frame = predict(seg_run, [file], img_size=(80, 120), out_dir=tmp_path / "frame", window=(80, 120))
    assert np.array_equal(np.asarray(Image.open(whole.results[0]["labels"])),
                          np.asarray(Image.open(frame.results[0]["labels"])))  # a window as large as the frame
    with pytest.raises(ValueError, match="multiple"):
        predict(seg_run, [file], img_size=(80, 120), out_dir=tmp_path / "bad", window=(30, 45))


def test_a_window_on_a_classification_run_is_a_clear_error(tiny_run, images, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--window is for a segmentation run"):
        predict(tiny_run[0], [images / "big.jpg"], window=16)
