"""Image folders (cpvt.data.folder) and datasets by name (cpvt.data.named)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpvt.data import folder as folder_mod
from cpvt.data import named as named_mod
from cpvt.data.base import DataError
from cpvt.data.folder import ImageFolderSource, load_image, subset
from cpvt.data.named import open_source, resolve_cache_dir, resolve_data_root

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def solid(path: Path, color, size=(20, 30), mode="RGB", fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, fmt, **save)
    return path


def corrupt(path: Path, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path


@pytest.fixture
def modes_root(tmp_path) -> tuple[Path, dict[str, tuple[int, int, int]]]:
    """Three classes, one image per colour mode and format; name -> expected RGB colour."""
    root = tmp_path / "modes"
    expect = {}

    def add(rel, color, **kw):
        solid(root / rel, kw.pop("fill", color), **kw)
        expect[rel] = color

    add("train/cat/rgb.png", RED)
    add("train/cat/photo.JPG", BLUE, fmt="JPEG", quality=95)  # upper-case extension
    add("train/cat/grey.png", (100, 100, 100), mode="L", fill=100)
    add("train/cat/bits.bmp", WHITE, mode="1", fill=1)
    add("train/dog/rgba_transparent.png", WHITE, mode="RGBA", fill=(0, 0, 0, 0))  # over white
    add("train/dog/rgba_opaque.webp", GREEN, mode="RGBA", fill=(0, 255, 0, 255), lossless=True)
    add("train/dog/la.png", (60, 60, 60), mode="LA", fill=(60, 255))
    add("train/dog/cmyk.jpg", (0, 255, 255), mode="CMYK", fill=(255, 0, 0, 0), quality=95)
    add("train/dog/cmyk.tiff", (0, 255, 255), mode="CMYK", fill=(255, 0, 0, 0))
    pal = Image.new("P", (20, 30), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    (root / "train/fox").mkdir(parents=True)
    pal.save(root / "train/fox/palette.gif")
    expect["train/fox/palette.gif"] = (10, 20, 30)
    pal.save(root / "train/fox/palette_transparent.png", transparency=1)
    expect["train/fox/palette_transparent.png"] = WHITE
    i16 = Image.fromarray(np.full((30, 20), 65535, np.uint16))
    assert i16.mode == "I;16"
    i16.save(root / "train/fox/grey16.png")
    expect["train/fox/grey16.png"] = WHITE  # scaled to 8 bits, not clipped
    (root / "train/fox/notes.txt").write_text("not an image, ignored")
    (root / "train/fox/.hidden.jpg").write_bytes(b"ignored: hidden")
    add("train/fox/sub/nested.jpeg", RED, fmt="JPEG", quality=95)  # found recursively
    add("val/dog/v.png", GREEN)  # val lacks 'cat' and 'fox': allowed
    return root, expect


def test_modes_become_rgb_with_labels(modes_root):
    root, expect = modes_root
    src = ImageFolderSource(root, workers=0)
    assert src.name == "modes" and src.splits == ("train", "val")
    assert src.classes == ["cat", "dog", "fox"]
    split = src.split("train", 8)
    assert split.images.shape == (len(expect) - 1, 3, 8, 8) and split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64 and split.skipped == [] and split.classes == src.classes
    paths, labels = src.files("train")
    assert labels == split.labels.tolist()
    assert labels == sorted(labels) and set(labels) == {0, 1, 2}
    for i, p in enumerate(paths):
        rel = Path(p).relative_to(root).as_posix()
        assert src.classes[labels[i]] == rel.split("/")[1]
        got = split.images[i].float().mean((1, 2))
        assert torch.allclose(got, torch.tensor(expect[rel], dtype=torch.float), atol=4), (rel, got)
    val = src.split("val", 8, mode="eval")
    assert val.labels.tolist() == [1] and val.images[0, :, 4, 4].tolist() == list(GREEN)


def test_load_image_single_file(modes_root):
    root, _ = modes_root
    a = load_image(root / "train/cat/rgb.png", 6)
    assert a.shape == (3, 6, 6) and a.dtype == np.uint8 and (a[0] == 255).all()


def make_pattern(path: Path) -> Path:
    """40x40: a 10-pixel green frame around a 20x20 square, red left half, blue right half."""
    a = np.zeros((40, 40, 3), np.uint8)
    a[:] = GREEN
    a[10:30, 10:20] = RED
    a[10:30, 20:30] = BLUE
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def test_train_and_eval_geometry(tmp_path):
    root = tmp_path / "geo"
    make_pattern(root / "train/a/square.png")
    wide = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: red left, blue right
    wide[:, :20] = RED
    wide[:, 20:] = BLUE
    Image.fromarray(wide).save(root / "train/a/wide.png")
    src = ImageFolderSource(root, workers=0)

    # train: the whole square image, shrunk to 20x20 (frame 5 px, inner square 10x10)
    sq = src.split("train", 20).images[0].permute(1, 2, 0).int()
    for (y, x), color in {(1, 1): GREEN, (10, 1): GREEN, (1, 18): GREEN, (10, 7): RED, (10, 12): BLUE}.items():
        assert (sq[y, x] - torch.tensor(color)).abs().max() <= 8, (y, x, sq[y, x])

    # eval, crop_pct=0.5: resize to floor(20/0.5)=40 (unchanged), keep the central 20x20: no frame
    ev = src.split("train", 20, mode="eval", crop_pct=0.5).images[0].permute(1, 2, 0).int()
    assert (ev[:, :10] == torch.tensor(RED)).all() and (ev[:, 10:] == torch.tensor(BLUE)).all()

    # a non-square image: shorter side -> size, then the centre crop of the long side
    wd = src.split("train", 10).images[1].permute(1, 2, 0).int()
    assert (wd[:, :4] - torch.tensor(RED)).abs().max() <= 8
    assert (wd[:, 6:] - torch.tensor(BLUE)).abs().max() <= 8
    # eval at 0.875: floor(10/0.875)=11 then crop 10
    assert src.split("train", 10, mode="eval").images.shape == (2, 3, 10, 10)


def big_folder(root: Path, good=120, bad=1) -> list[Path]:
    """``good`` random 8x8 PNGs in classes a/b, plus ``bad`` corrupt .jpg files in a."""
    rng = np.random.default_rng(0)
    for cls in "ab":
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
    for i in range(good):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / "ab"[i % 2] / f"{i:03d}.png")
    return [corrupt(root / "train" / "a" / f"zz_bad{j}.jpg", seed=j) for j in range(bad)]


def test_unreadable_files_are_skipped_and_reported(tmp_path):
    root = tmp_path / "big"
    (bad,) = big_folder(root, good=120, bad=1)  # 1 of 121: under 1 %
    split = ImageFolderSource(root, workers=0).split("train", 8)
    assert len(split) == 120 and split.skipped == [str(bad.resolve())]
    assert split.labels.bincount().tolist() == [60, 60]


def test_too_many_unreadable_files_is_an_error(tmp_path):
    root = tmp_path / "bad"
    for i in range(3):
        solid(root / "train/a" / f"{i}.png", RED)
    corrupt(root / "train/a/random.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(buf, "JPEG")
    (root / "train/a/truncated.jpg").write_bytes(buf.getvalue()[:200])
    (root / "train/a/text.png").write_text("hello")
    with pytest.raises(DataError, match=r"3 of 6 files in split 'train' .*could not be read.*random\.jpg"):
        ImageFolderSource(root, workers=0, cache_dir=tmp_path / "cache").split("train", 8)
    assert not list((tmp_path / "cache").rglob("*.npy*")), "no cache entry for a failed split"


def test_limit_is_a_fixed_class_balanced_subset(tmp_path):
    labels = [0] * 50 + [1] * 7 + [2] * 3
    five = subset(labels, 5)
    assert five == sorted(five) and {labels[i] for i in five} == {0, 1, 2}
    assert subset(labels, 5) == five and set(five) <= set(subset(labels, 20))
    assert five != [0, 1, 2, 3, 4] and subset(labels, 100) == list(range(60))
    assert np.bincount([labels[i] for i in subset(labels, 15)]).tolist() == [6, 6, 3]

    root = tmp_path / "big"
    big_folder(root, good=120, bad=0)
    src = ImageFolderSource(root, workers=0, cache_dir=tmp_path / "cache")
    part = src.split("train", 8, limit=10)
    assert len(part) == 10 and part.labels.bincount().tolist() == [5, 5]
    full = src.split("train", 8)
    paths, _ = src.files("train")
    picked, _ = src.files("train", limit=10)
    assert torch.equal(part.images, full.images[[paths.index(p) for p in picked]])
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        src.split("train", 8, limit=0)


def test_parallel_decoding_matches_in_process(tmp_path):
    root = tmp_path / "big"
    big_folder(root, good=120, bad=1)
    one = ImageFolderSource(root, workers=0).split("train", 8, mode="eval")
    two = ImageFolderSource(root, workers=2).split("train", 8, mode="eval")
    assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)
    assert one.skipped == two.skipped and len(two.skipped) == 1


def test_disk_cache_decodes_once(tmp_path, monkeypatch):
    root = tmp_path / "geo"
    make_pattern(root / "train/a/square.png")
    solid(root / "train/b/red.png", RED)
    corrupt_file = corrupt(root / "train/b/zz_bad.jpg")
    for i in range(120):
        solid(root / "train/b" / f"{i:03d}.bmp", BLUE, size=(4, 4))
    cache = tmp_path / "cache"
    src = ImageFolderSource(root, cache_dir=cache, workers=0)
    first = src.split("train", 16, mode="eval", crop_pct=0.9)
    files = sorted(p.name for p in (cache / "decoded").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    assert files[1].startswith("geo-train-16px-eval-crop0.9-")
    assert not [f for f in files if "tmp" in f]

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(folder_mod, "_decode_one", no_decode)
    again = ImageFolderSource(root, cache_dir=cache, workers=0).split("train", 16, mode="eval", crop_pct=0.9)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert again.skipped == [str(corrupt_file.resolve())]
    # copy-on-write memory map: writing to the tensor never changes the cache file
    again.images[0].fill_(7)
    third = src.split("train", 16, mode="eval", crop_pct=0.9)
    assert torch.equal(third.images, first.images)
    # other arguments, or a changed folder, decode again
    with pytest.raises(AssertionError, match="decoded again"):
        src.split("train", 8, mode="eval", crop_pct=0.9)
    solid(root / "train/a/new.png", GREEN)
    with pytest.raises(AssertionError, match="decoded again"):
        src.split("train", 16, mode="eval", crop_pct=0.9)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope")

    (tmp_path / "flat/cats").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no split folders in .*flat.*ROOT/train/<class>/<image>.*ROOT/val/"):
        ImageFolderSource(tmp_path / "flat")

    (tmp_path / "noclass/train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train has no class subfolders"):
        ImageFolderSource(tmp_path / "noclass")

    (tmp_path / "noimg/train/a").mkdir(parents=True)
    (tmp_path / "noimg/train/a/readme.txt").write_text("x")
    src = ImageFolderSource(tmp_path / "noimg")
    with pytest.raises(DataError, match=r"split 'train' of .*noimg has no images"):
        src.split("train", 8)
    with pytest.raises(DataError, match=r"no split 'val' .*available: train"):
        src.split("val", 8)

    solid(tmp_path / "extra/train/a/x.png", RED)
    solid(tmp_path / "extra/val/b/x.png", RED)
    with pytest.raises(DataError, match=r"split 'val' .*\['b'\] that split 'train' lacks"):
        ImageFolderSource(tmp_path / "extra")

    solid(tmp_path / "ok/train/a/x.png", RED)
    with pytest.raises(ValueError, match="mode must be one of"):
        ImageFolderSource(tmp_path / "ok", workers=0).split("train", 8, mode="test")


# --------------------------------------------------------------------------- named datasets


def test_resolution_order(tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    monkeypatch.delenv("CPVT_DATA_ROOT", raising=False)
    monkeypatch.delenv("CPVT_CACHE_DIR", raising=False)
    assert resolve_data_root()[0] == named_mod.DEFAULT_DATA_ROOT.expanduser()
    assert resolve_cache_dir() == Path(".cache/cpvt")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert resolve_data_root()[0] == (tmp_path / "shared" / "data").resolve()
    monkeypatch.setenv("CPVT_DATA_ROOT", str(tmp_path / "env"))
    monkeypatch.setenv("CPVT_CACHE_DIR", str(tmp_path / "envcache"))
    assert resolve_data_root()[0] == tmp_path / "env"
    assert resolve_cache_dir() == tmp_path / "envcache"
    assert resolve_data_root(tmp_path / "arg")[0] == tmp_path / "arg"
    assert resolve_cache_dir(tmp_path / "c") == tmp_path / "c"


def fake_cifar(data_root: Path, extra_members=()) -> Path:
    """A tiny cifar10-jpeg.tar.gz with the real archive's layout."""
    data_root.mkdir(parents=True, exist_ok=True)
    archive = data_root / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for split, n in (("train", 3), ("test", 2)):
            for cls, color in (("airplane", RED), ("cat", BLUE)):
                for i in range(n):
                    buf = io.BytesIO()
                    Image.new("RGB", (32, 32), color).save(buf, "JPEG", quality=95)
                    info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))
        for info, data in extra_members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


def test_named_dataset_from_archive_extracts_once(tmp_path, monkeypatch):
    data_root, cache = tmp_path / "data", tmp_path / "cache"
    fake_cifar(data_root)
    src = open_source("cifar10", data_root=data_root, cache_dir=cache, workers=0)
    assert isinstance(src, ImageFolderSource) and src.name == "cifar10"
    assert src.root == (cache / "datasets" / "cifar10").resolve()
    assert src.classes == ["airplane", "cat"] and src.splits == ("train", "test")
    assert json.loads((src.root / named_mod.MARKER).read_text())["archive_bytes"] > 0
    assert [p.name for p in (cache / "datasets").iterdir()] == ["cifar10"], "no temporary folders left"
    test = src.split("test", 16, mode="eval")
    assert test.labels.tolist() == [0, 0, 1, 1] and test.images.shape == (4, 3, 16, 16)

    def no_extract(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(named_mod, "_extract", no_extract)
    again = open_source("CIFAR10", data_root=data_root, cache_dir=cache)
    assert again.root == src.root
    # The archive may even go away once extracted.
    (data_root / "cifar10-jpeg.tar.gz").unlink()
    assert open_source("cifar10", data_root=data_root, cache_dir=cache).root == src.root


def test_named_dataset_prefers_an_extracted_folder(tmp_path):
    solid(tmp_path / "data/imagenette/train/n01/x.png", RED)
    src = open_source("imagenette", data_root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert src.root == (tmp_path / "data/imagenette").resolve() and not (tmp_path / "cache/datasets").exists()


def test_interrupted_or_unsafe_archives_leave_nothing(tmp_path):
    data_root, cache = tmp_path / "data", tmp_path / "cache"
    archive = fake_cifar(data_root)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])  # truncated download
    with pytest.raises(DataError, match=r"cannot extract .*cifar10-jpeg\.tar\.gz"):
        open_source("cifar10", data_root=data_root, cache_dir=cache)
    assert list((cache / "datasets").iterdir()) == []

    evil = tarfile.TarInfo("../evil.txt")
    evil.size = 4
    fake_cifar(data_root, extra_members=[(evil, b"evil")])
    with pytest.raises(DataError, match="cannot extract"):
        open_source("cifar10", data_root=data_root, cache_dir=cache)
    assert list((cache / "datasets").iterdir()) == [] and not (cache / "evil.txt").exists()

    # A half folder without the completion marker is not trusted: it is replaced.
    solid(cache / "datasets/cifar10/train/junk/x.png", RED)
    fake_cifar(data_root)
    src = open_source("cifar10", data_root=data_root, cache_dir=cache)
    assert src.classes == ["airplane", "cat"]


def test_named_dataset_errors(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        open_source("cifar10", data_root=empty, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    for path in (empty / "cifar10", tmp_path / "cache" / "datasets" / "cifar10", empty / "cifar10-jpeg.tar.gz"):
        assert str(path) in msg
    assert "--data-root" in msg and "CPVT_DATA_ROOT" in msg and f"Put cifar10-jpeg.tar.gz in {empty}" in msg

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"unknown dataset 'cifar100'.*cifar10, imagenette, synthetic.*path"):
        open_source("cifar100")
    with pytest.raises(DataError, match="does not exist"):
        open_source("./no/such/folder")


def test_path_is_an_image_folder(tmp_path):
    solid(tmp_path / "mine/train/a/x.png", RED)
    src = open_source(str(tmp_path / "mine"), cache_dir=tmp_path / "cache", workers=0)
    assert src.name == "mine" and len(src.split("train", 4)) == 1


def test_synthetic_by_name():
    from cpvt.data.synthetic import SyntheticShapes

    assert isinstance(open_source("synthetic", seed=1), SyntheticShapes)


@pytest.mark.slow  # extracting 60,000 files takes 10-40 s on this disk
@pytest.mark.skipif(
    not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(),
    reason=f"real CIFAR-10 archive not at {SHARED_DATA / 'cifar10-jpeg.tar.gz'}",
)
def test_real_cifar10_archive(tmp_path):
    cache = tmp_path / "cache"
    try:
        _check_real_cifar10(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # 60,000 files: do not leave them in pytest's kept tmp dirs


def _check_real_cifar10(cache: Path):
    src = open_source("cifar10", data_root=SHARED_DATA, cache_dir=cache)
    assert src.classes == CIFAR10_CLASSES and src.splits == ("train", "test")
    paths, labels = src.files("test")
    assert len(paths) == 10000 and np.bincount(labels).tolist() == [1000] * 10
    split = src.split("test", 32, mode="eval", crop_pct=1.0, limit=30)
    assert split.images.shape == (30, 3, 32, 32) and split.labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert split.skipped == [] and 60 < split.images.float().mean() < 190
    # 32 px at crop_pct 1.0 is the stored JPEG itself
    first, _ = src.files("test", limit=30)
    with Image.open(first[0]) as im:
        stored = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(split.images[0].numpy(), stored)
