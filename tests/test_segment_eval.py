"""Segmentation evaluation: whole frames resized or a sliding window, scored over the whole split."""

import pytest
import torch
from torch import nn

import cpvt
from cpvt.data.base import SegSplit
from cpvt.train.segment_eval import evaluate_segmentation, sliding_logits, window_starts


def test_window_starts_cover_the_frame_evenly():
    assert window_starts(360, 120) == [0, 120, 240]  # CamVid at 1x crops: no overlap
    assert window_starts(360, 240) == [0, 120]  # 2x crops: overlapping by 120
    assert window_starts(480, 320) == [0, 160]
    assert window_starts(100, 120) == [0]  # a window larger than the frame: the whole frame
    assert window_starts(100, 30) == [0, 23, 47, 70]


class Oracle(nn.Module):
    """Logits that read the class off the red channel (class k drawn as red = k / 4 after the eval transform
    with mean 0 and std 1): a model that is right wherever it sees the pixel, and pointwise."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        cls = (x[:, 0] * 4).round().long().clamp(0, self.k - 1)  # (B, H, W)
        return torch.nn.functional.one_hot(cls, self.k).permute(0, 3, 1, 2).float() * 10


def split_of(masks, k=3, ignore=255):
    images = torch.zeros(masks.shape[0], 3, *masks.shape[1:], dtype=torch.uint8)
    images[:, 0] = (masks.clamp(max=k - 1) * 255 // 4).to(torch.uint8)
    images[:, 0] = torch.where(masks == ignore, torch.zeros_like(images[:, 0]), images[:, 0])
    return SegSplit(images, masks, ["a", "b", "c"][:k], ignore_index=ignore, name="toy")


def toy_masks():
    m = torch.zeros(3, 24, 32, dtype=torch.long)
    m[:, :, 16:] = 1
    m[:, 12:, :8] = 2
    m[0, :2, :2] = 255  # a few ignored pixels
    return m


def test_a_model_that_is_right_everywhere_scores_100_whole_and_windowed():
    split = split_of(toy_masks())
    for window in (None, (12, 16), (16, 16)):
        out = evaluate_segmentation(Oracle(3), split, torch.device("cpu"), (0, 0, 0), (1, 1, 1), window=window)
        assert out["miou"] == pytest.approx(100.0) and out["pixel_acc"] == pytest.approx(100.0), window
        assert out["pixels"] == 3 * 24 * 32 - 4 and out["frames"] == 3


def test_errors_are_counted_over_the_whole_split():
    masks = toy_masks()
    split = split_of(masks)
    wrong = masks.clone()
    split.masks = wrong
    wrong[1, :, 16:] = 0  # frame 1: the model's class 1 region is labelled 0
    out = evaluate_segmentation(Oracle(3), split, torch.device("cpu"), (0, 0, 0), (1, 1, 1))
    half = 24 * 16  # pixels of frame 1 that disagree
    labelled = 3 * 24 * 32 - 4
    assert out["pixel_acc"] == pytest.approx(100 * (labelled - half) / labelled)
    assert out["iou"][2] == pytest.approx(100.0) and out["iou"][1] < 100 and out["iou"][0] < 100


def test_sliding_window_of_a_pointwise_model_is_the_whole_frame_result():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size=1)
    x = torch.randn(2, 3, 36, 50)
    with torch.no_grad():
        assert torch.allclose(sliding_logits(conv, x, (16, 20), 4), conv(x), atol=1e-6)


def test_a_real_model_at_other_sizes_and_windows():
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_micro", task="segmentation", num_classes=3, depth=2)
    split = split_of(toy_masks())
    for size, window in (((32, 48), None), ((48, 64), (32, 32)), (None, (16, 16))):
        out = evaluate_segmentation(model, split, torch.device("cpu"), (0.5,) * 3, (0.25,) * 3, size=size,
                                    window=window)
        assert 0 <= out["miou"] <= 100 and out["loss"] > 0 and len(out["iou"]) == 3
    assert model.training  # the model's mode is put back
