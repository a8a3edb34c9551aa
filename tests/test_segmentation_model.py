"""create_model(name, task="segmentation"): a backbone's feature maps and a light head, logits at the input size."""

import pytest
import torch
import torch.nn.functional as F

import cpvt
from cpvt.checkpoint import save_checkpoint
from cpvt.models import model_from_checkpoint
from cpvt.models.segmentation import FPNHead, LinearHead, SegmentationModel

MICRO = cpvt.list_models("*micro*")


@pytest.mark.parametrize("name", MICRO)
def test_every_micro_model_segments_at_any_size(name):
    torch.manual_seed(0)
    model = cpvt.create_model(name, task="segmentation", num_classes=5).eval()
    assert isinstance(model, SegmentationModel) and model.num_classes == 5
    assert isinstance(model.head, LinearHead if "twins" not in name and "cvt" not in name else FPNHead)
    p = 8 if ("twins" in name or "cvt" in name) else model.patch_size  # pyramids need multiples of their stride
    for h, w in ((4 * p, 4 * p), (6 * p, 6 * p), (3 * p, 5 * p)):
        with torch.no_grad():
            assert model(torch.randn(2, 3, h, w)).shape == (2, 5, h, w), (name, h, w)


def test_every_parameter_learns():
    for name in ("cpvt_micro", "twins_svt_micro"):
        model = cpvt.create_model(name, task="segmentation", num_classes=4)
        F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.randint(0, 4, (2, 32, 32))).backward()
        idle = [n for n, q in model.named_parameters() if q.grad is None or not q.grad.abs().sum()]
        assert not idle, (name, idle)


def test_the_linear_head_is_a_per_token_classifier_upsampled():
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_micro", task="segmentation", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 48)
    inner = model.backbone.model
    _, maps = inner.forward_intermediates(x, indices=[-1], norm=True)  # (1, D, 8, 12), the normed last block
    tokens = maps[0].flatten(2).transpose(1, 2)  # (1, 96, D)
    w = model.head.classifier.weight.flatten(1)
    by_hand = (tokens @ w.T + model.head.classifier.bias).transpose(1, 2).reshape(1, 3, 8, 12)
    with torch.no_grad():
        expected = F.interpolate(by_hand, size=(32, 48), mode="bilinear", align_corners=False)
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_a_segmentation_checkpoint_rebuilds_itself(tmp_path):
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_micro", task="segmentation", num_classes=6, peg_kernel_size=5).eval()
    save_checkpoint(tmp_path / "seg.safetensors", model, config={"img_size": 32}, classes=list("abcdef"))
    again = model_from_checkpoint(tmp_path / "seg.safetensors").eval()
    assert isinstance(again, SegmentationModel) and again.model_args["task"] == "segmentation"
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_test_time_fixes_reach_the_backbone():
    torch.manual_seed(0)
    plain = cpvt.create_model("cpvt_micro", task="segmentation", num_classes=3).eval()
    fixed = cpvt.create_model("cpvt_micro", task="segmentation", num_classes=3, peg_fixed_grid="dilate").eval()
    fixed.load_state_dict(plain.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        assert torch.equal(plain(x), fixed(x))  # the training grid: the same model
        x = torch.randn(1, 3, 64, 64)
        assert not torch.equal(plain(x), fixed(x))


def test_bad_tasks_are_refused():
    with pytest.raises(ValueError, match="task must be one of"):
        cpvt.create_model("cpvt_micro", task="detection")
    with pytest.raises(ValueError, match="takes no task"):
        cpvt.create_model("cpvt_micro", task="segmentation", features_only=True)


@pytest.mark.parametrize("name", ["cpvt_micro", pytest.param("twins_svt_micro", marks=pytest.mark.slow)])
def test_a_segmentation_model_exports_with_dynamic_height_and_width(name, tmp_path):
    from conftest import assert_export_matches

    torch.manual_seed(0)
    model = cpvt.create_model(name, task="segmentation", num_classes=5, **({"depth": 2} if "cpvt" in name else {}))
    rows = assert_export_matches(model.eval(), tmp_path / "seg.onnx", [(32, 32), (48, 64), (64, 64)])
    assert rows[1]["size"] == "48x64"  # non-square, per-pixel logits checked in onnxruntime
