"""`cpvt eval` resolution protocols for segmentation runs: test frames decoded natively (scale), sliding
windows (canvas), the test split, and classification runs refusing both."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image
from test_seg_train import CLASSES, _frame

from cpvt.cli import main
from cpvt.train.engine import train

FH, FW = 48, 64  # the folder's frames
TH, TW = 24, 32  # the run's frame_size (and training size)
SPLITS = {"train": 6, "val": 3, "test": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """A mask folder with train, val and test splits; returns it and each split's labelled pixels."""
    root = tmp_path_factory.mktemp("segp") / "shapes"
    rng = np.random.default_rng(1)
    labelled = {}
    for split, n in SPLITS.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        labelled[split] = 0
        for i in range(n):
            image, mask = _frame(rng, FH, FW)
            labelled[split] += int((mask != 255).sum())
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root, labelled


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "seg"
    assert main(["train", "--data", str(folder[0]), "--model", "cpvt_micro", "--epochs", "1", "--batch-size", "3",
                 "--out", str(out), "--cache-dir", str(out.parent / "cache"),
                 "--set", f"img_size=[{TH},{TW}]", "--set", f"frame_size=[{TH},{TW}]", "--set", "model.depth=2",
                 "--set", "model.embed_dim=16", "--set", "model.num_heads=1", "--set", "amp=off",
                 "--set", "workers=0"]) == 0
    assert json.loads((out / "config.json").read_text())["frame_size"] == [TH, TW]
    return out


def _eval(run: Path, tmp: Path, *flags: str) -> list[dict]:
    out = tmp / "eval.json"
    assert main(["eval", str(run), "--cache-dir", str(run.parent / "cache"), "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())


def test_default_decodes_at_the_runs_frame_size(run, tmp_path):
    row = _eval(run, tmp_path, "--img-sizes", f"{FH}x{FW}")[0]
    assert row["split"] == "val" and row["frame_size"] == [TH, TW] and row["decoded_at"] == "run"
    result = row["sizes"][f"{FH}x{FW}"]
    assert result["scored_size"] == [TH, TW] and result["size"] == [FH, FW] and result["window"] is None


def test_frames_native_scores_every_native_pixel_at_every_size(run, folder, tmp_path, capsys):
    rows = _eval(run, tmp_path, "--frames", "native", "--img-sizes", f"{TH}x{TW},{FH}x{FW}")
    assert f"mIoU @{TH}x{TW}" in capsys.readouterr().out
    row = rows[0]
    assert row["frame_size"] == [FH, FW] and row["decoded_at"] == "native"
    assert set(row["sizes"]) == {f"{TH}x{TW}", f"{FH}x{FW}"}
    for key, result in row["sizes"].items():
        assert result["scored_size"] == [FH, FW], key
        assert result["pixels"] == folder[1]["val"], key  # 48*64*frames minus the ignored pixels
        assert result["frames"] == SPLITS["val"]
        for k in ("miou", "pixel_acc", "iou", "loss", "size", "window"):
            assert k in result, k
        assert len(result["iou"]) == len(CLASSES)
    explicit = _eval(run, tmp_path, "--frames", f"{FH}x{FW}", "--img-sizes", f"{FH}x{FW}")[0]
    assert explicit["sizes"][f"{FH}x{FW}"]["miou"] == row["sizes"][f"{FH}x{FW}"]["miou"]


def test_windows_give_one_column_each_and_a_full_frame_window_is_no_window(run, tmp_path, capsys):
    rows = _eval(run, tmp_path, "--frames", "native", "--img-sizes", f"{FH}x{FW}",
                 "--windows", f"{TH}x{TW},{FH}x{FW},none")
    out = capsys.readouterr().out
    row = rows[0]
    keys = [f"{FH}x{FW} window {TH}x{TW}", f"{FH}x{FW} window {FH}x{FW}", f"{FH}x{FW}"]
    assert list(row["sizes"]) == keys
    for key in keys:
        assert f"mIoU @{key}" in out, key
    assert row["sizes"][keys[0]]["window"] == [TH, TW] and row["sizes"][keys[2]]["window"] is None
    full, none = row["sizes"][keys[1]], row["sizes"][keys[2]]
    for k in ("miou", "pixel_acc", "iou", "loss", "pixels"):
        assert full[k] == none[k], k  # exactly: the same forward pass
    assert row["sizes"][keys[0]]["pixels"] == none["pixels"]  # every pixel scored once
    single = _eval(run, tmp_path, "--frames", "native", "--img-sizes", f"{FH}x{FW}", "--window", f"{TH}x{TW}")[0]
    assert list(single["sizes"]) == [keys[0]] and single["sizes"][keys[0]]["miou"] == row["sizes"][keys[0]]["miou"]


def test_a_window_larger_than_the_test_size_is_a_clear_error(run, tmp_path, capsys):
    assert main(["eval", str(run), "--cache-dir", str(run.parent / "cache"), "--img-sizes", f"{TH}x{TW}",
                 "--window", f"{FH}x{FW}"]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_split_test_scores_the_test_split(run, folder, tmp_path):
    row = _eval(run, tmp_path, "--split", "test", "--frames", "native", "--img-sizes", f"{FH}x{FW}")[0]
    assert row["split"] == "test"
    result = row["sizes"][f"{FH}x{FW}"]
    assert result["frames"] == SPLITS["test"] and result["pixels"] == folder[1]["test"]


def test_classification_runs_refuse_frames_and_windows(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "cls", epochs=1, train_limit=32, val_limit=16, batch_size=16)
    train(cfg)
    for flags in (["--window", "8x8"], ["--frames", "native"], ["--windows", "8x8,none"]):
        assert main(["eval", str(tmp_path / "cls"), "--img-sizes", "16", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert "classification run" in err and "segmentation" in err, flags
