"""mIoU, per-class IoU and pixel accuracy from one confusion matrix over the whole split."""

import math

import pytest
import torch

from cpvt.train.metrics import ConfusionMatrix


def test_known_counts_give_the_textbook_numbers():
    # class 0: 3 true pixels, 2 right; class 1: 2 true, 1 right (and one predicted 0); one ignored pixel
    target = torch.tensor([[[0, 0, 0, 1, 1, 255]]])
    pred = torch.tensor([[[0, 0, 1, 1, 0, 1]]])
    m = ConfusionMatrix(3, ignore_index=255)
    m.update(pred, target)
    out = m.compute()
    # IoU_0 = 2 / (3 + 3 - 2) = 0.5; IoU_1 = 1 / (2 + 2 - 1) = 1/3; class 2 never occurs: NaN, not in the mean
    assert out["iou"][0] == pytest.approx(50.0) and out["iou"][1] == pytest.approx(100 / 3)
    assert math.isnan(out["iou"][2])
    assert out["miou"] == pytest.approx((50 + 100 / 3) / 2)
    assert out["pixel_acc"] == pytest.approx(60.0) and out["pixels"] == 5


def test_the_split_is_counted_once_not_averaged_per_batch():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (6, 8, 8))
    target[:3] = 0  # the first three frames hold class 0 only: a per-batch mean would weigh them apart
    pred = torch.where(torch.rand(6, 8, 8) < 0.7, target, torch.randint(0, 4, (6, 8, 8)))
    whole = ConfusionMatrix(4)
    whole.update(pred, target)
    parts = ConfusionMatrix(4)
    for i in range(6):
        parts.update(pred[i : i + 1], target[i : i + 1])
    assert torch.equal(whole.counts, parts.counts)
    per_batch = sum(_single(pred[i], target[i]) for i in range(6)) / 6
    assert whole.compute()["miou"] != pytest.approx(per_batch)


def _single(pred, target):
    m = ConfusionMatrix(4)
    m.update(pred[None], target[None])
    return m.compute()["miou"]


def test_logits_are_argmaxed_and_bad_labels_are_named():
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 2] = 1.0
    m = ConfusionMatrix(3)
    m.update(logits, torch.full((1, 2, 2), 2))
    assert m.compute()["miou"] == 100.0
    with pytest.raises(ValueError, match=r"\[7\]"):
        m.update(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="differ in size"):
        m.update(torch.zeros(1, 2, 3), torch.zeros(1, 2, 2))


def test_all_reduce_sums_the_shards():
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    b.update(torch.tensor([[[1, 1]]]), torch.tensor([[[0, 1]]]))
    other = b.counts.clone()
    a.all_reduce(lambda t: t.add_(other))  # what a two-process all-reduce of the sums does
    assert a.counts.tolist() == [[1, 1], [0, 2]]
