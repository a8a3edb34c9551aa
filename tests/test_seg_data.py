"""Segmentation data: image + label-map folders (cpvt.data.masks), CamVid by name, joint augmentation."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpvt.data import masks as masks_mod
from cpvt.data.base import DataError, SegSplit
from cpvt.data.masks import MaskFolderSource, resize_nearest
from cpvt.data.named import CAMVID_CLASSES, open_source
from cpvt.train.augment_masks import JointAugment, resize_frames

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ["sky", "road", "car"]
COLOURS = np.array([(90, 160, 230), (60, 60, 60), (200, 30, 30)], dtype=np.uint8)  # per class
H, W = 24, 32


def label_map(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """Sky over road, a car rectangle at a place set by ``seed``, a few void pixels (255)."""
    m = np.zeros((h, w), np.uint8)
    m[h // 2:] = 1
    top, left = 6 + seed % 5, 2 + 3 * (seed % 6)
    m[top:top + 8, left:left + 10] = 2
    m[0, :3] = 255
    return m


def add_pair(root: Path, split: str, stem: str, seed: int = 0, ext: str = ".png", mask=None, image=None) -> tuple:
    mask = label_map(seed) if mask is None else mask
    img_path, mask_path = root / "images" / split / f"{stem}{ext}", root / "masks" / split / f"{stem}.png"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    if image is None:
        image = Image.fromarray(COLOURS[np.minimum(mask, 2)])
    image.save(img_path, **({"quality": 95} if ext == ".jpg" else {}))
    (mask if isinstance(mask, Image.Image) else Image.fromarray(mask, "L")).save(mask_path)
    return img_path, mask_path


@pytest.fixture
def seg_root(tmp_path) -> Path:
    root = tmp_path / "street"
    for i, stem in enumerate(["a", "b", "c", "d"]):
        add_pair(root, "train", stem, seed=i, ext=".jpg" if i % 2 else ".png")
    add_pair(root, "val", "e", seed=7)
    (root / "classes.txt").write_text("sky\nroad\ncar\n\n")
    return root


def corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return path


# --------------------------------------------------------------------------- the generic source


def test_mask_folder_shapes_classes_and_ignore_index(seg_root):
    src = MaskFolderSource(seg_root, workers=0)
    assert src.name == "street" and src.splits == ("train", "val") and src.classes == CLASSES
    split = src.split("train")
    assert isinstance(split, SegSplit) and split.name == "train" and len(split) == 4
    assert split.images.shape == (4, 3, H, W) and split.images.dtype == torch.uint8
    assert split.masks.shape == (4, H, W) and split.masks.dtype == torch.uint8 and split.frame_size == (H, W)
    assert split.classes == CLASSES and split.num_classes == 3 and split.ignore_index == 255
    assert split.skipped == [] and split.notes == []
    for i in range(4):  # sorted by name, masks exact (PNG), images exact for PNG, close for JPEG (b and d)
        assert np.array_equal(split.masks[i].numpy(), label_map(i))
        want = COLOURS[np.minimum(label_map(i), 2)].transpose(2, 0, 1).astype(int)
        assert np.abs(split.images[i].numpy().astype(int) - want).mean() < (12 if i % 2 else 1e-9)
    assert src.split("val").masks.shape == (1, H, W)


def test_resizing_takes_whole_frames_and_never_interpolates_labels(seg_root):
    src = MaskFolderSource(seg_root, workers=0)
    native = src.split("train")
    small = src.split("train", size=(12, 16))
    assert small.images.shape == (4, 3, 12, 16) and small.masks.shape == (4, 12, 16)
    for i in range(4):
        assert np.array_equal(small.masks[i].numpy(), resize_nearest(native.masks[i].numpy(), (12, 16)))
        assert set(small.masks[i].unique().tolist()) <= set(native.masks[i].unique().tolist())
    assert src.split("train", size=20).masks.shape == (4, 20, 20)  # an int is a square
    with pytest.raises(ValueError, match="size must be"):
        src.split("train", size=(12, 0))


def test_resize_nearest_is_pillows_nearest():
    mask = np.random.default_rng(0).integers(0, 200, (37, 53)).astype(np.uint8)
    for hw in [(10, 13), (74, 106), (20, 60)]:
        pil = np.asarray(Image.fromarray(mask).resize(hw[::-1], Image.Resampling.NEAREST))
        assert np.array_equal(resize_nearest(mask, hw), pil)


def test_cache_hit_does_not_decode_again(seg_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    src = MaskFolderSource(seg_root, cache_dir=cache, workers=0)
    first = src.split("train", size=(12, 16))
    files = sorted(p.name for p in (cache / "decoded").iterdir())
    assert len(files) == 3 and all(f.startswith("street-train-seg-12x16-") for f in files)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(masks_mod, "_decode_pair", no_decode)
    again = MaskFolderSource(seg_root, cache_dir=cache, workers=0).split("train", size=(12, 16))
    assert torch.equal(again.images, first.images) and torch.equal(again.masks, first.masks)
    assert again.classes == CLASSES and again.ignore_index == 255
    # an edited mask changes the key: decoded again
    m = label_map(0)
    m[:2] = 2
    Image.fromarray(m, "L").save(seg_root / "masks/train/a.png")
    os.utime(seg_root / "masks/train/a.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        src.split("train", size=(12, 16))
    monkeypatch.undo()
    assert src.split("train", size=(12, 16)).masks[0, 0].tolist() == [2] * 16
    assert not [p for p in (cache / "decoded").iterdir() if p.name.endswith(".tmp")]


def test_limit_is_a_fixed_subset(seg_root):
    src = MaskFolderSource(seg_root, workers=0)
    part = src.split("train", limit=2)
    assert len(part) == 2 and torch.equal(part.masks, src.split("train", limit=2).masks)
    full = src.split("train")
    assert all(any(torch.equal(m, f) for f in full.masks) for m in part.masks)
    with pytest.raises(ValueError, match="limit"):
        src.split("train", limit=0)


def test_classes_from_argument_and_errors(seg_root, tmp_path):
    (seg_root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"no class list .*classes\.txt.*classes=\["):
        MaskFolderSource(seg_root)
    src = MaskFolderSource(seg_root, classes=["s", "r", "c", "extra"], ignore_index=255, workers=0)
    assert src.split("val").classes == ["s", "r", "c", "extra"]
    with pytest.raises(ValueError, match="must not be a class index"):
        MaskFolderSource(seg_root, classes=CLASSES, ignore_index=2)
    wide = MaskFolderSource(seg_root, classes=[f"c{i}" for i in range(300)], ignore_index=300, workers=0)
    assert wide.split("val").masks.dtype == torch.int64  # 300 classes do not fit a byte
    with pytest.raises(DataError, match="no split folders"):
        MaskFolderSource(tmp_path, classes=CLASSES)


def test_custom_layout_and_palette_masks(tmp_path):
    root = tmp_path / "custom"
    pal = Image.fromarray(label_map(1), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [7] * (3 * 253))  # colours are ignored: indices count
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    Image.fromarray(COLOURS[np.minimum(label_map(1), 2)]).save(root / "train/x.jpg")
    pal.save(root / "trainannot/x_label.png")
    src = MaskFolderSource(root, images="{split}", masks="{split}annot", mask_suffix="_label.png", classes=CLASSES,
                           workers=0)
    split = src.split("train")
    assert np.array_equal(split.masks[0].numpy(), label_map(1))


# --------------------------------------------------------------------------- bad input, one rule each


def test_mask_of_another_size_is_an_error_naming_both(seg_root):
    img, mask = add_pair(seg_root, "train", "b", seed=1, ext=".jpg", mask=label_map(1, 12, 16),
                         image=Image.new("RGB", (W, H)))
    with pytest.raises(DataError) as err:
        MaskFolderSource(seg_root, workers=0).split("train", size=(12, 16))
    assert str(mask) in str(err.value) and str(img) in str(err.value) and "16x12" in str(err.value)


def test_label_out_of_range_is_an_error_naming_file_and_values(seg_root):
    m = label_map(2)
    m[5, 5], m[6, 6] = 7, 11
    _, mask = add_pair(seg_root, "train", "c", mask=m)
    with pytest.raises(DataError, match=r"label\(s\) 7, 11 outside the 3 classes") as err:
        MaskFolderSource(seg_root, workers=0).split("train")
    assert str(mask) in str(err.value)


def test_rgb_mask_is_an_error(seg_root):
    _, mask = add_pair(seg_root, "train", "a", mask=Image.new("RGB", (W, H), (1, 1, 1)), image=Image.new("RGB", (W, H)))
    with pytest.raises(DataError, match="a label map must be single-channel") as err:
        MaskFolderSource(seg_root, workers=0).split("train")
    assert str(mask) in str(err.value) and "RGB" in str(err.value)


def test_image_without_mask_and_mask_without_image_are_noted(seg_root):
    (seg_root / "masks/train/c.png").unlink()
    lonely = seg_root / "masks/train/zz.png"
    Image.fromarray(label_map(0), "L").save(lonely)
    split = MaskFolderSource(seg_root, workers=0).split("train")
    assert len(split) == 3 and split.skipped == [str(seg_root / "images/train/c.png")]
    text = "\n".join(split.notes)
    assert "1 of 4 images" in text and "no mask" in text and str(seg_root / "images/train/c.png") in text
    assert "have no image" in text and str(lonely) in text
    for p in (seg_root / "masks/train").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="has no image with a mask"):
        MaskFolderSource(seg_root, workers=0).split("train")


def test_unreadable_files_are_counted_skips(seg_root, monkeypatch):
    corrupt(seg_root / "images/train/b.jpg")
    corrupt(seg_root / "masks/train/c.png")
    with pytest.raises(DataError, match=r"2 of 4 pairs .* could not be read \(more than 1% allowed\)"):
        MaskFolderSource(seg_root, workers=0).split("train")
    monkeypatch.setattr(masks_mod, "MAX_UNREADABLE_FRACTION", 0.5)
    split = MaskFolderSource(seg_root, workers=0).split("train")
    assert len(split) == 2 and split.masks.shape == (2, H, W)
    assert split.skipped == [str(seg_root / "images/train/b.jpg"), str(seg_root / "images/train/c.png")]
    text = "\n".join(split.notes)
    assert "skipped 2 of 4 pairs" in text and f"its mask {seg_root / 'masks/train/c.png'} cannot be read" in text


def test_native_size_needs_one_frame_size(seg_root):
    add_pair(seg_root, "train", "b", seed=1, ext=".jpg", mask=label_map(1, 20, 30))
    with pytest.raises(DataError, match=r"differ in size.*pass size=\(h, w\)") as err:
        MaskFolderSource(seg_root, workers=0).split("train")
    for name in ("a.png", "b.jpg"):
        assert str(seg_root / "images/train" / name) in str(err.value)
    assert MaskFolderSource(seg_root, workers=0).split("train", size=(12, 16)).masks.shape == (4, 12, 16)


def test_two_images_for_one_mask_is_an_error(seg_root):
    Image.new("RGB", (W, H)).save(seg_root / "images/train/a.jpg")  # beside a.png
    with pytest.raises(DataError, match="same name stem"):
        MaskFolderSource(seg_root, workers=0).files("train")


# --------------------------------------------------------------------------- CamVid by name


def fake_camvid(data_root: Path) -> Path:
    """A two-frame archive in CamVid's layout."""
    data_root.mkdir(parents=True, exist_ok=True)
    archive = data_root / "camvid-360x480.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for split in ("train", "val", "test"):
            for stem in ("0001TP_000010", "0001TP_000020"):
                m = label_map(3)
                m[m == 255] = 11
                for name, im in ((f"camvid/{split}/{stem}.jpg", Image.fromarray(COLOURS[np.minimum(m, 2)])),
                                 (f"camvid/{split}annot/{stem}.png", Image.fromarray(m, "L"))):
                    buf = io.BytesIO()
                    im.save(buf, "JPEG" if name.endswith(".jpg") else "PNG")
                    info = tarfile.TarInfo(name)
                    info.size = buf.tell()
                    tf.addfile(info, io.BytesIO(buf.getvalue()))
    return archive


def test_camvid_by_name_from_an_archive(tmp_path):
    src = open_source("CamVid", data_root=fake_camvid(tmp_path / "data").parent, cache_dir=tmp_path / "cache",
                      workers=0)
    assert isinstance(src, MaskFolderSource) and src.name == "camvid" and src.splits == ("train", "val", "test")
    assert src.classes == CAMVID_CLASSES and len(src.classes) == 11 and src.ignore_index == 11
    split = src.split("test")
    assert split.masks.shape == (2, H, W) and int(split.masks.max()) == 11 and split.ignore_index == 11


def test_unknown_name_lists_the_segmentation_datasets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"cifar10, imagenette, synthetic \(classification\) and camvid"):
        open_source("cityscapes")


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    if not (SHARED_DATA / "camvid-360x480.tar.gz").is_file():
        pytest.skip(f"real CamVid archive not at {SHARED_DATA / 'camvid-360x480.tar.gz'}")
    return open_source("camvid", data_root=SHARED_DATA, cache_dir=tmp_path_factory.mktemp("camvid-cache"))


def test_real_camvid_archive(camvid):
    assert camvid.classes == CAMVID_CLASSES and camvid.ignore_index == 11
    assert {s: len(camvid.files(s)) for s in camvid.splits} == {"train": 367, "val": 101, "test": 233}
    native = camvid.split("val", limit=12)  # the checks need a dozen frames, not all 701
    assert native.images.shape == (12, 3, 360, 480) and native.masks.shape == (12, 360, 480)
    assert native.masks.dtype == torch.uint8 and native.skipped == [] and native.notes == []
    values = native.masks.unique().tolist()
    assert values[0] >= 0 and values[-1] <= 11 and {0, 1, 3}.issubset(values)  # sky, building, road everywhere
    small = camvid.split("val", size=(120, 160), limit=12)
    assert small.images.shape == (12, 3, 120, 160) and small.masks.shape == (12, 120, 160)
    for big, little in zip(native.masks, small.masks):
        assert set(little.unique().tolist()) <= set(big.unique().tolist())
        assert np.array_equal(little.numpy(), resize_nearest(big.numpy(), (120, 160)))
    assert (native.masks[:, :60] == 0).float().mean() > (native.masks[:, 300:] == 0).float().mean()  # sky on top


# --------------------------------------------------------------------------- joint augmentation


def batch(b: int = 4, h: int = H, w: int = W) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.stack([torch.from_numpy(label_map(i, h, w)) for i in range(b)])  # (B, h, w) uint8
    images = torch.from_numpy(COLOURS[np.minimum(masks.numpy(), 2)]).permute(0, 3, 1, 2).contiguous()
    return images, masks


def test_joint_augment_shapes_and_labels_are_never_interpolated():
    images, masks = batch()
    torch.manual_seed(0)
    aug = JointAugment((16, 20), scale=(0.5, 2.0), ignore_index=255, mean=(0.5,) * 3, std=(0.25,) * 3)
    for _ in range(5):
        x, m = aug(images, masks)
        assert x.shape == (4, 3, 16, 20) and x.dtype == torch.float32 and m.shape == (4, 16, 20)
        assert m.dtype == torch.int64
        for i in range(4):
            assert set(m[i].unique().tolist()) <= set(masks[i].unique().tolist()) | {255}


def test_identity_and_flip():
    images, masks = batch()
    x, m = JointAugment((H, W), scale=(1, 1), hflip=0)(images, masks)
    assert torch.equal(m, masks.long()) and torch.equal((x * 255).round().to(torch.uint8), images)
    left = torch.zeros(1, H, W, dtype=torch.uint8)
    left[:, :, :W // 2] = 2  # class 2 on the left half only
    x, m = JointAugment((H, W), scale=(1, 1), hflip=1)(torch.zeros(1, 3, H, W, dtype=torch.uint8), left)
    assert (m[:, :, W // 2:] == 2).all() and (m[:, :, :W // 2] == 0).all()


def test_scaled_down_frames_are_padded_with_the_ignore_index():
    images, masks = batch(2)
    masks[masks == 255] = 0
    torch.manual_seed(1)
    x, m = JointAugment((H, W), scale=(0.5, 0.5), hflip=0, ignore_index=11)(images, masks)
    outside = m == 11
    assert outside.float().mean().item() == pytest.approx(0.75, abs=0.02)  # a half-size frame covers a quarter
    assert (x.permute(1, 0, 2, 3)[:, outside] == 0).all() and (x.permute(1, 0, 2, 3)[:, ~outside] > 0).all()
    for i in range(2):  # what is inside is the frame, halved: one block of about 12x16 frame pixels
        rows, cols = (~outside[i]).nonzero(as_tuple=True)
        box = m[i, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert abs(box.shape[0] - H // 2) <= 1 and abs(box.shape[1] - W // 2) <= 1 and not (box == 11).any()
        assert set(box.unique().tolist()) == set(masks[i].unique().tolist())


def test_canvas_crops_stay_inside_large_frames():
    images, masks = batch(3, 72, 96)
    masks[masks == 255] = 1
    torch.manual_seed(2)
    x, m = JointAugment((24, 32), scale=(0.5, 2.0), ignore_index=255)(images, masks)
    assert x.shape == (3, 3, 24, 32) and not (m == 255).any()  # 36x48 or larger: a 24x32 crop always fits


def test_joint_augment_is_deterministic_under_a_seed():
    images, masks = batch()
    aug = JointAugment((16, 20))
    torch.manual_seed(3)
    a = aug(images, masks)
    torch.manual_seed(3)
    b = aug(images, masks)
    c = aug(images, masks)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_resize_frames_for_evaluation():
    images, masks = batch()
    x, m = resize_frames(images, masks, (12, 16))
    assert x.shape == (4, 3, 12, 16) and x.dtype == torch.uint8 and m.dtype == torch.uint8
    for i in range(4):
        assert np.array_equal(m[i].numpy(), resize_nearest(masks[i].numpy(), (12, 16)))
    assert resize_frames(images, masks, (H, W))[1] is masks
