"""Bad inputs, and schedules that fit the run (issue 15, items 5 and 6).

Every bad input, driven through the command line, ends in one clear line and an exit code, or in a
skip that is counted and named: never a traceback, never a silent loss. Short runs clip their warm-up
(with a note) without changing any schedule the repository ships, and ``cpvt train --data FOLDER``
fits its recipe to small images well enough to learn a 10-class folder in seconds.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import lr_trace
from cpvt.cli import main
from cpvt.data.folder import load_image
from cpvt.study.experiments import TABLES
from cpvt.study.reproduce import plan
from cpvt.train.config import RECIPES, TrainConfig, resolve_config
from cpvt.train.engine import MAX_WARMUP_FRACTION, warmup_steps

REPO = Path(__file__).resolve().parents[1]
# a model small enough that a run takes a second or two on the CPU
TINY = ["--set", "model.depth=2", "--set", "model.embed_dim=16", "--set", "model.num_heads=2", "--set", "workers=0"]
COLOURS = [(230, 30, 30), (30, 200, 30), (40, 70, 230), (240, 220, 30), (220, 40, 220), (40, 220, 220),
           (250, 140, 20), (120, 40, 170), (245, 245, 245), (140, 90, 40)]


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``cpvt ARGS``: exit code, stdout, stderr; argparse's own exits count as exit codes. No traceback."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def shapes_folder(root: Path, per_class: int = 30, val_per_class: int = 10, size: int = 20, classes: int = 10,
                  seed: int = 0) -> Path:
    """``classes`` classes of coloured shapes (a colour per class; squares and discs alternate) at random
    places and sizes on dark grey backgrounds, ImageNet layout."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                grey = int(rng.integers(0, 90))
                im = Image.new("RGB", (size, size), (grey, grey, grey))
                r = int(rng.integers(size // 4, size // 3 + 1))
                cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
                shape = ImageDraw.Draw(im).rectangle if c % 2 == 0 else ImageDraw.Draw(im).ellipse
                shape((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[c % len(COLOURS)])
                im.save(d / f"{i:03d}.png")
    return root


def train_args(data: Path, tmp_path: Path, *extra) -> list:
    return ["train", "--data", data, "--epochs", 1, "--batch-size", 16, "--out", tmp_path / "run",
            "--cache-dir", tmp_path / "cache", *TINY, *extra]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A trained run (3 classes, 16 px, patch 4) and its data folder, for eval / predict / export."""
    tmp = tmp_path_factory.mktemp("tiny")
    data = shapes_folder(tmp / "data", per_class=8, val_per_class=2, size=16, classes=3)
    assert main([str(a) for a in train_args(data, tmp)]) == 0
    return tmp / "run", data


# -- schedules that fit the run -------------------------------------------------------------------------


def test_a_short_run_clips_its_warm_up_with_a_note():
    # the case: DeiT's 5 warm-up epochs in a 3-epoch run never reached the peak learning rate
    cfg = resolve_config("deit", {"epochs": 3, "batch_size": 64})
    steps, note = warmup_steps(cfg, 10)
    assert steps == 6 and "warm-up clipped to 6 step(s), 20% of this run's 30" in note and "warmup_epochs=5" in note
    lr = lr_trace(cfg, 10)
    assert max(lr) == pytest.approx(cfg.scaled_lr()) and lr.index(max(lr)) == 6
    # `cpvt train --data synthetic --epochs 2`: half the run was warm-up, now a fifth of it
    cfg = resolve_config("synthetic", {"epochs": 2})
    steps_per_epoch = 20000 // cfg.batch_size
    steps, note = warmup_steps(cfg, steps_per_epoch)
    assert steps == math.ceil(MAX_WARMUP_FRACTION * 2 * steps_per_epoch) and note
    lr = lr_trace(cfg, steps_per_epoch)
    assert lr.index(max(lr)) == steps and max(lr) == pytest.approx(cfg.scaled_lr())  # the peak, a fifth in
    # a long run keeps the warm-up it asks for, silently
    cfg = resolve_config("deit")
    assert warmup_steps(cfg, 1251) == (5 * 1251, None)


def test_an_ema_slower_than_the_run_is_said():
    from cpvt.train.engine import schedule_notes

    cfg = resolve_config("synthetic", {"epochs": 2}, ["ema=True"])
    assert any("ema_decay=0.99996 averages over about 25,000 steps" in n for n in schedule_notes(cfg, 100))
    assert not any("ema" in n for n in schedule_notes(resolve_config("synthetic", {"epochs": 2}), 100))


def shipped_configs():
    """Every training config the repository ships: each run of every budget, the demo's, each recipe's."""
    configs = []
    for budget in ("smoke", "cpu", "gpu"):
        for job in plan(REPO / "experiments", budget, list(TABLES), Path("runs/x")):
            configs.append((f"{budget}/{job.data}/{Path(job.config.out).name}", job.config))
    for model in ("cpvt_micro_gap_plus", "deit_micro", "deit_micro_nope"):
        configs.append((f"demo/{model}", resolve_config("demo", {"model": model})))
    configs += [(f"recipe/{r}", resolve_config(r)) for r in RECIPES]
    return configs


def test_no_shipped_schedule_changes():
    """The clip leaves every shipped schedule as it was: the warm-up is what the code before it computed,
    ``min(round(warmup_epochs * steps), total - 1)``, at the run's own steps per epoch (``train_limit`` /
    ``batch_size`` where the config fixes it, else any from 1 to 1,000), so the learning rate of every step
    is unchanged. Every shipped config also passes validation."""
    checked = 0
    for name, cfg in shipped_configs():
        cfg.validate()
        fixed = cfg.train_limit is not None and cfg.data == "synthetic"
        for s in [cfg.train_limit // cfg.batch_size] if fixed else range(1, 1001):
            before = min(int(round(cfg.warmup_epochs * s)), cfg.epochs * s - 1)
            assert warmup_steps(cfg, s)[0] == before, (name, s)
            checked += 1
    assert checked > 100_000


# -- cpvt train on a folder of small images -------------------------------------------------------------
def test_a_folder_of_small_images_gets_fitting_defaults_and_learns(tmp_path, capsys):
    data = shapes_folder(tmp_path / "shapes", per_class=30, val_per_class=10, size=20)
    rc, out, err = cli(capsys, "train", "--data", data, "--epochs", 8, "--out", tmp_path / "run", "--cache-dir",
                       tmp_path / "cache", "--set", "model.depth=2", "--set", "model.embed_dim=32",
                       "--set", "workers=0")
    assert rc == 0, err
    assert "recipe 'small'" in out and "median shorter side 20 px" in out
    assert "img_size 20" in out and "batch_size 32 instead of the recipe's 128" in out
    assert "warm-up clipped to 15 step(s)" in out  # 5 epochs of warm-up (45 steps) in an 8-epoch run (72)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["img_size"] == 20 and config["batch_size"] == 32 and config["crop"] == "pad"
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < 0.9 * log[0]["train_loss"]  # label smoothing 0.1 keeps it well above 0
    assert log[-1]["val_top1"] > 50, log  # 10 classes: chance is 10 %


def test_explicit_choices_are_kept(tmp_path, capsys):
    data = shapes_folder(tmp_path / "shapes", per_class=4, val_per_class=1, size=20, classes=3)
    rc, out, err = cli(capsys, "train", "--data", data, "--img-size", 16, "--epochs", 1, "--batch-size", 4,
                       "--recipe", "cifar10", "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", *TINY)
    assert rc == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert not [n for n in notes if "recipe '" in n or "img_size" in n or "batch_size" in n], notes
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["img_size"] == 16 and config["batch_size"] == 4 and config["mean"] == [0.491, 0.482, 0.447]


# -- images: every mode becomes RGB, unreadable ones are counted -------------------------------------------
RED, BLUE = (255, 0, 0), (0, 0, 255)


def two_halves(left, right, w=20, h=10) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2], a[:, w // 2 :] = left, right
    return Image.fromarray(a)


def write_mode(path: Path, kind: str) -> tuple[int, int, int]:
    """One image of each awkward kind; returns the RGB colour it must load as."""
    if kind == "grey16":
        Image.fromarray(np.full((10, 10), 32896, np.uint16)).save(path)  # I;16: 128 in 8 bits, not clipped
        return (128, 128, 128)
    if kind == "palette":
        im = Image.new("P", (10, 10), 1)
        im.putpalette([0, 0, 0, 10, 120, 230] + [0] * 762)
        im.save(path)
        return (10, 120, 230)
    if kind == "rgba":
        Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(path)  # fully transparent: over white
        return (255, 255, 255)
    if kind == "cmyk":
        Image.new("CMYK", (10, 10), (255, 0, 0, 0)).save(path, quality=95)
        return (0, 255, 255)
    if kind == "grey":
        Image.new("L", (10, 10), 77).save(path)
        return (77, 77, 77)
    raise ValueError(kind)


@pytest.mark.parametrize("kind, name", [("grey16", "a.png"), ("palette", "a.gif"), ("rgba", "a.png"),
                                        ("cmyk", "a.jpg"), ("grey", "a.png")])
def test_image_modes_load_as_rgb(tmp_path, kind, name):
    expect = write_mode(tmp_path / name, kind)
    a = load_image(tmp_path / name, 8)
    assert a.shape == (3, 8, 8) and a.dtype == np.uint8
    assert np.abs(a.reshape(3, -1).mean(1) - np.array(expect)).max() <= 3, (kind, a[:, 4, 4])


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left half ends up on top
    two_halves(RED, BLUE).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    a = load_image(tmp_path / "rotated.jpg", 8).astype(int)  # 10x20 upright -> 8x16 -> centre 8x8
    assert abs(a[:, :3].reshape(3, -1).mean(1) - np.array(RED)).max() < 30  # top rows red
    assert abs(a[:, 5:].reshape(3, -1).mean(1) - np.array(BLUE)).max() < 30  # bottom rows blue


def test_predict_reads_every_mode(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    for kind, name in [("grey16", "g16.png"), ("palette", "p.gif"), ("rgba", "t.png"), ("cmyk", "c.jpg"),
                       ("grey", "l.png")]:
        write_mode(tmp_path / name, kind)
    exif = Image.Exif()
    exif[0x0112] = 6
    two_halves(RED, BLUE).save(tmp_path / "exif.jpg", exif=exif)
    rc, out, _ = cli(capsys, "predict", run, tmp_path)
    assert rc == 0 and "classified 6 image(s)" in out and "skipped 0 unreadable" in out


def png_with_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` (what a decompression bomb does), a few bytes on disk."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


def bad_images(folder: Path) -> dict[str, str]:
    """Unreadable files of every kind in ``folder``: name -> what the skip reason says."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    png_with_size(folder / "bomb.png", 40_000, 40_000)  # 1.6 G pixels: Pillow refuses it outright
    png_with_size(folder / "bomb_warning.png", 10_000, 10_000)  # 100 M: only a warning in Pillow, refused here
    (folder / "loop.png").symlink_to("loop.png")  # a link to itself
    return {"corrupt.jpg": "UnidentifiedImageError", "truncated.jpg": "truncated", "bomb.png": "DecompressionBombError",
            "bomb_warning.png": "DecompressionBombWarning", "loop.png": "Too many levels of symbolic links"}


def test_unreadable_images_are_skipped_counted_and_named(tmp_path, capsys):
    data = shapes_folder(tmp_path / "data", per_class=170, val_per_class=2, size=8, classes=3)  # 510 good
    expect = bad_images(data / "train" / "class0")
    rc, out, err = cli(capsys, *train_args(data, tmp_path))
    assert rc == 0, err
    [line] = [line for line in out.splitlines() if "could not be read" in line]
    assert line.startswith("note: skipped 5 of 515 files in split 'train'")
    for name, reason in expect.items():
        assert name in line and reason in line, (name, line)
    assert "510 train" in out
    # decoded again from the cache: the same note, reasons included
    rc, out2, _ = cli(capsys, *train_args(data, tmp_path, "--set", "seed=1", "--out", tmp_path / "run2"))
    assert rc == 0 and line in out2.splitlines()


def test_files_that_are_not_images_are_counted(tmp_path, capsys):
    data = shapes_folder(tmp_path / "data", per_class=8, val_per_class=1, size=8, classes=2)
    (data / "train" / "class0" / "photo.heic").write_bytes(b"an image format Pillow cannot read")
    (data / "train" / "class1" / "README").write_text("notes")
    (data / "train" / "class1" / ".DS_Store").write_bytes(b"hidden: not counted")
    rc, out, err = cli(capsys, *train_args(data, tmp_path))
    assert rc == 0, err
    assert "note: ignored 2 file(s) in split 'train'" in out and "(.heic, no extension)" in out


def test_too_many_unreadable_images_stop_with_the_names(tmp_path, capsys):
    data = shapes_folder(tmp_path / "data", per_class=4, val_per_class=1, size=8, classes=2)
    bad_images(data / "train" / "class1")
    rc, _, err = cli(capsys, *train_args(data, tmp_path))
    assert rc == 2 and "5 of 13 files in split 'train'" in err and "could not be read as images" in err
    assert "bomb.png" in err and len(err.strip().splitlines()) == 1


# -- folders ------------------------------------------------------------------------------------------
def test_an_empty_class_folder_is_an_error(tmp_path, capsys):
    data = shapes_folder(tmp_path / "data", per_class=4, val_per_class=1, size=8, classes=2)
    (data / "train" / "zebra").mkdir()
    rc, _, err = cli(capsys, *train_args(data, tmp_path))
    assert rc == 2 and "class folder(s) zebra of split 'train'" in err and "hold no images" in err


def test_a_class_only_in_val_is_an_error(tmp_path, capsys):
    data = shapes_folder(tmp_path / "data", per_class=4, val_per_class=1, size=8, classes=2)
    (data / "val" / "zebra").mkdir()
    Image.new("RGB", (8, 8)).save(data / "val" / "zebra" / "z.png")
    rc, _, err = cli(capsys, *train_args(data, tmp_path))
    assert rc == 2 and "class folder(s) ['zebra'] that split 'train' lacks" in err


def test_a_symlink_loop_is_listed_once(tmp_path, capsys):
    data = shapes_folder(tmp_path / "data", per_class=8, val_per_class=1, size=8, classes=2)
    (data / "train" / "class0" / "up").symlink_to("..")  # to the split folder: loops, and holds class1
    (data / "train" / "class1" / "again").symlink_to(".", target_is_directory=True)  # to itself
    rc, out, err = cli(capsys, *train_args(data, tmp_path))
    assert rc == 0, err
    assert "16 train" in out  # 8 per class, no duplicates, none under the wrong class
    ignored = [line for line in out.splitlines() if line.startswith("note: ignored folder")]
    assert len(ignored) == 2 and all("already listed" in line for line in ignored)


def test_file_names_that_are_not_utf8(tmp_path, capsys):
    data = shapes_folder(tmp_path / "data", per_class=8, val_per_class=2, size=8, classes=2)
    weird = os.fsencode(data / "train") + b"/caf\xe9"  # Latin-1, not UTF-8
    try:
        os.mkdir(weird)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    for i in range(8):
        Image.new("RGB", (8, 8), (0, 0, 255)).save(weird + b"/\xff%d.png" % i)
    os.mkdir(os.fsencode(data / "val") + b"/caf\xe9")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(os.fsencode(data / "val") + b"/caf\xe9/\xfe.png")
    rc, out, err = cli(capsys, *train_args(data, tmp_path))
    assert rc == 0, err
    assert "24 train" in out and "3 classes" in out
    rc, out, err = cli(capsys, "predict", tmp_path / "run", data / "val")
    assert rc == 0 and "classified 5 image(s)" in out
    assert "caf\\xe9/\\xfe.png" in out  # the raw bytes shown escaped


# -- settings -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, message", [
    ("lr=abc", "config key 'lr' expects float, got 'abc'"),
    ("lr=nan", "config key 'lr' expects float, got 'nan'"),
    ("lr=1e999", "lr must be a finite number, got inf"),
    ("lr=-1", "lr must be positive, got -1.0"),
    ("epochs=0", "epochs must be a positive integer, got 0"),
    ("epochs=2.5", "config key 'epochs' expects int"),
    ("batch_size=-8", "batch_size must be a positive integer, got -8"),
    ("warmup_epochs=-1", "warmup_epochs must be at least 0"),
    ("mixup=-0.5", "mixup must be at least 0"),
    ("label_smoothing=1.5", "label_smoothing must be in [0, 1)"),
    ("drop_path=2", "drop_path must be in [0, 1)"),
    ("eval_every=0", "eval_every must be a positive integer"),
    ("betas=[0.9]", "betas must be two numbers in [0, 1)"),
    ("std=[0, 1, 1]", "std must be three positive numbers"),
    ("rrc_scale=[0.9, 0.1]", "rrc_scale must be two numbers 0 < min <= max <= 1"),
    ("img_size=-32", "img_size must be a positive integer"),
    ("seed=-1", "seed must be at least 0"),
    ("amp=fp16", "amp must be auto, bf16 or off"),
    ("model.depth='six'", "depth='six' (expects a whole number"),
    ("model.embed_dim=1e999", "embed_dim=inf (not a finite number)"),
    ("model.qkv_bias=3", "qkv_bias=3 (expects True or False"),
])
def test_bad_set_values_stop_before_any_work(tmp_path, capsys, setting, message):
    data = shapes_folder(tmp_path / "data", per_class=2, val_per_class=1, size=8, classes=2)
    rc, out, err = cli(capsys, *train_args(data, tmp_path, "--set", setting))
    assert rc == 2 and message in err, err
    assert not (tmp_path / "cache").exists()  # nothing decoded


def test_several_bad_values_are_named_at_once():
    with pytest.raises(ValueError, match=r"invalid config: epochs must be a positive integer, got 0; lr must be "
                                         r"positive, got -1.0"):
        resolve_config("synthetic", None, ["lr=-1", "epochs=0"])
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        TrainConfig(epochs=0).validate()


@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", "-1", "expected a positive whole number, got '-1'"),
    ("--batch-size", "0", "expected a positive whole number, got '0'"),
    ("--img-size", "x", "image size must be N or HxW, got 'x'"),
    ("--img-size", "32x48", "this command takes square sizes (N or NxN), got '32x48'"),
])
def test_bad_flag_values(tmp_path, capsys, flag, value, message):
    rc, _, err = cli(capsys, "train", "--data", tmp_path, "--out", tmp_path / "run", flag, value)
    assert rc == 2 and f"argument {flag}: {message}" in err


# -- image sizes that are not a whole number of patches ------------------------------------------------------
def test_train_size_not_a_multiple_of_the_patch(tmp_path, capsys):
    data = shapes_folder(tmp_path / "data", per_class=2, val_per_class=1, size=8, classes=2)
    rc, _, err = cli(capsys, *train_args(data, tmp_path, "--img-size", 30))
    assert rc == 2 and "input size 30x30 is not valid for patch size 4" in err and "28x28 or 32x32" in err
    assert not (tmp_path / "cache").exists()  # refused before decoding
    rc, _, err = cli(capsys, *train_args(data, tmp_path, "--set", "train_sizes=[16, 18]"))
    assert rc == 2 and "input size 18x18 is not valid for patch size 4" in err


@pytest.mark.parametrize("command", [
    ["eval", "{run}", "--img-sizes", "16,30"],
    ["predict", "{run}", "{data}/val", "--img-size", "30"],
    ["export", "{run}", "--img-size", "30", "--out", "{tmp}/model.onnx"],
    ["export", "{run}", "--verify-sizes", "16,30x32", "--out", "{tmp}/model.onnx"],
    ["export", "{run}", "--verify-sizes", "16,30x32", "--format", "pt2", "--out", "{tmp}/model.pt2"],
])
def test_size_not_a_multiple_of_the_patch(tiny_run, tmp_path, capsys, command):
    run, data = tiny_run
    args = [a.format(run=run, data=data, tmp=tmp_path) for a in command]
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "is not valid for patch size 4" in err, err
    assert not list(tmp_path.iterdir())  # nothing exported


def test_bad_sizes_and_counts_on_other_commands(tiny_run, capsys):
    run, data = tiny_run
    for args, message in [(["eval", run, "--img-sizes", "0"], "image size must be positive, got '0'"),
                          (["eval", run, "--batch-size", "0"], "expected a positive whole number, got '0'"),
                          (["predict", run, data, "--topk", "-1"], "expected a positive whole number, got '-1'"),
                          (["export", run, "--tol", "nan"], "expected a positive number, got 'nan'"),
                          (["export", run, "--verify-sizes", "0x16"], "image size must be positive")]:
        rc, _, err = cli(capsys, *args)
        assert rc == 2 and message in err, (args, err)
