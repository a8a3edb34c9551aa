"""Segmentation through the one training engine: `cpvt train` on a mask folder, exact resume, `cpvt eval` by
mIoU at HxW sizes, a task that does not fit the data, and classification left bit-identical."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights
from PIL import Image

from cpvt.checkpoint import load_checkpoint
from cpvt.cli import main
from cpvt.models import model_from_checkpoint
from cpvt.train.config import resolve_config
from cpvt.train.engine import train

REPO = Path(__file__).resolve().parents[1]
H, W = 32, 48
CLASSES = ["background", "box", "bar"]
COLOURS = {0: (90, 90, 90), 1: (220, 40, 40), 2: (40, 60, 220)}


def _frame(rng: np.random.Generator, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """An h x w frame: a box (class 1) and a bar (class 2) on background, a few ignored (255) pixels. Sizes scale
    with the frame (at 32x48: a box of 8-12 x 10-16 px and a bar 5 px wide)."""
    box_h, box_w, bar = (h // 4, 3 * h // 8), (5 * w // 24, w // 3), round(5 * w / 48)
    mask = np.zeros((h, w), np.uint8)
    y, x = rng.integers(0, h - box_h[1]), rng.integers(0, w - box_w[1])
    mask[y : y + rng.integers(*box_h), x : x + rng.integers(*box_w)] = 1
    col = rng.integers(0, w - bar - 1)
    mask[:, col : col + bar] = 2
    image = np.zeros((h, w, 3), np.uint8)
    for k, colour in COLOURS.items():
        image[mask == k] = colour
    image = np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    mask[rng.random((h, w)) < 0.03] = 255  # unlabelled pixels: neither trained on nor scored
    return image, mask


@pytest.fixture(scope="module")
def mask_folder(tmp_path_factory) -> Path:
    """MaskFolderSource's default layout: classes.txt, images/{split}/*.png, masks/{split}/*.png."""
    root = tmp_path_factory.mktemp("seg") / "shapes"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            image, mask = _frame(rng)
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _flags(folder: Path, out: Path) -> list[str]:
    return ["--data", str(folder), "--model", "cpvt_micro", "--set", f"img_size=[{H},{W}]", "--epochs", "2",
            "--batch-size", "4", "--out", str(out), "--cache-dir", str(out.parent / "cache"),
            "--set", "model.depth=2", "--set", "model.embed_dim=32", "--set", "model.num_heads=2",
            "--set", "amp=off", "--set", "workers=0", "--set", "lr=0.02"]


@pytest.fixture(scope="module")
def seg_run(mask_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "seg"
    assert main(["train", *_flags(mask_folder, out), "--save-every-steps", "1"]) == 0
    return out


def test_cli_trains_a_segmentation_run_on_a_mask_folder(seg_run, capsys):
    for name in ("config.json", "log.jsonl", "last.safetensors", "best.safetensors", "metrics.json"):
        assert (seg_run / name).exists(), name
    log = [json.loads(line) for line in (seg_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for key in ("train_loss", "val_miou", "val_pixel_acc", "val_loss", "lr"):
        assert key in log[0], key
    assert "val_top1" not in log[0]
    metrics = json.loads((seg_run / "metrics.json").read_text())
    assert metrics["best_val_miou"] == max(r["val_miou"] for r in log)
    config = json.loads((seg_run / "config.json").read_text())
    assert config["img_size"] == [H, W] and config["frame_size"] == [H, W]  # the folder's frames, in whole patches
    ckpt = load_checkpoint(seg_run / "best.safetensors")
    assert ckpt.classes == CLASSES and ckpt.progress["best_miou"] == metrics["best_val_miou"]
    model = model_from_checkpoint(ckpt)
    assert model.model_args["task"] == "segmentation" and model.num_classes == 3
    assert model.pretrained_cfg["input_size"] == [3, H, W]
    assert model(torch.zeros(1, 3, H, W)).shape == (1, 3, H, W)


def test_segmentation_resume_mid_run_is_bit_identical(mask_folder, seg_run, tmp_path, monkeypatch):
    from cpvt.cli import build_parser
    from cpvt.train import tasks

    args = build_parser().parse_args(["train", *_flags(mask_folder, tmp_path / "part"), "--save-every-steps", "1"])
    flags = {k: getattr(args, k) for k in ("data", "model", "epochs", "batch_size", "out", "cache_dir",
                                           "ckpt_every_steps")}
    cfg = lambda: resolve_config("camvid", {**flags, "frame_size": [H, W]}, args.set)  # noqa: E731 - as the CLI did
    calls, real = {"n": 0}, tasks.SegmentationTask.train_batch

    def crash_on_the_4th_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, step 2: one step after a mid-epoch checkpoint
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(tasks.SegmentationTask, "train_batch", crash_on_the_4th_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg())
    progress = load_checkpoint(tmp_path / "part" / "last.safetensors").progress
    assert (progress["epoch"], progress["step"]) == (1, 1)
    monkeypatch.setattr(tasks.SegmentationTask, "train_batch", real)
    train(cfg(), resume=True)
    assert_same_weights(seg_run, tmp_path / "part")
    assert json.loads((tmp_path / "part" / "metrics.json").read_text())["best_val_miou"] == \
        json.loads((seg_run / "metrics.json").read_text())["best_val_miou"]


def test_eval_reports_miou_per_hxw_size(seg_run, capsys):
    assert main(["eval", str(seg_run), "--img-sizes", f"{H}x{W},48x64", "--cache-dir", str(seg_run.parent / "cache"),
                 "--json", str(seg_run / "eval.json"), "--plot", str(seg_run / "eval.png")]) == 0
    out = capsys.readouterr().out
    assert (seg_run / "eval.png").stat().st_size > 5000  # mIoU per size, drawn
    assert f"mIoU @{H}x{W}" in out and "mIoU @48x64" in out and "pix acc @48x64" in out
    row = json.loads((seg_run / "eval.json").read_text())[0]
    assert row["task"] == "segmentation" and set(row["sizes"]) == {f"{H}x{W}", "48x64"}
    trained = json.loads((seg_run / "log.jsonl").read_text().splitlines()[-1])["val_miou"]
    assert row["sizes"][f"{H}x{W}"]["miou"] == pytest.approx(trained, abs=1e-6)  # the size it validated at


def test_a_task_that_does_not_fit_the_data_is_a_clear_error(mask_folder, tmp_path, capsys):
    assert main(["train", *_flags(mask_folder, tmp_path / "cls"), "--set", "task=classification"]) == 2
    assert "task=classification" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--out", str(tmp_path / "syn"), "--set", "task=segmentation"]) == 2
    assert "segmentation needs frames with label maps" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic", "--out", str(tmp_path / "syn"), "--set", "img_size=[32,48]"]) == 2
    assert "classification trains square images" in capsys.readouterr().err


#: The last line of scripts/fingerprint.py before the task refactor (torch 2.13.0+cpu, this repository's CPU runner).
FINGERPRINT = "train cpvt_micro synthetic 2 epochs weights=a9405e81f922f0db"


@pytest.mark.skipif(torch.__version__ != "2.13.0+cpu", reason="the recorded hash is of torch 2.13.0+cpu")
def test_classification_training_is_bit_identical_to_before_the_task_refactor(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import fingerprint
    finally:
        sys.path.remove(str(REPO / "scripts"))
    torch.set_num_threads(1)
    assert fingerprint.train_line(tmp_path) == FINGERPRINT


def test_a_run_on_crops_validates_through_windows_of_its_crop(mask_folder, tmp_path):
    """Canvas training (crops smaller than the frames): validation sees the frames as training did, through
    windows of the crop, not as whole frames (which would be a larger canvas than the model ever saw)."""
    from cpvt.data import open_source
    from cpvt.models import model_from_checkpoint
    from cpvt.train.segment_eval import evaluate_segmentation

    out = tmp_path / "crops"
    flags = [f if f != f"img_size=[{H},{W}]" else "img_size=[16,24]" for f in _flags(mask_folder, out)]
    assert main(["train", *flags, "--epochs", "1", "--set", "seg_scale=[1.0,1.0]"]) == 0
    logged = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["val_miou"]
    model = model_from_checkpoint(out / "last.safetensors")
    split = open_source(str(mask_folder), cache_dir=str(tmp_path / "cache")).split("val")
    config = json.loads((out / "config.json").read_text())
    args = (model, split, torch.device("cpu"), config["mean"], config["std"])
    windowed = evaluate_segmentation(*args, window=(16, 24))["miou"]
    assert logged == pytest.approx(windowed, abs=1e-6)
    assert logged != pytest.approx(evaluate_segmentation(*args)["miou"], abs=1e-6)  # not the whole frame
