"""amp=auto's documented rule: on a CPU, bf16 only with native bf16 instructions and a model at least
CPU_BF16_MIN_WIDTH wide (benchmarks/amp_choice.py measured small models slower in bf16)."""

from __future__ import annotations

import pytest
import torch

import cpvt
from cpvt.train import precision
from cpvt.train.precision import CPU_BF16_MIN_WIDTH, autocast_dtype, model_width

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_only_for_wide_models_on_native_bf16_cpus(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    narrow = cpvt.create_model("deit_micro", embed_dim=64, num_heads=2)
    wide = cpvt.create_model("deit_micro", embed_dim=CPU_BF16_MIN_WIDTH, num_heads=3)
    assert autocast_dtype(CPU, "auto", narrow) is None
    assert autocast_dtype(CPU, "auto", wide) == (torch.bfloat16 if native else None)
    assert autocast_dtype(CPU, "auto") == (torch.bfloat16 if native else None)  # no model: by the CPU alone
    assert autocast_dtype(CPU, "bf16", narrow) == torch.bfloat16  # asked for: always
    assert autocast_dtype(CPU, "off", wide) is None


def test_width_is_found_through_wrappers():
    model = cpvt.create_model("deit_micro", embed_dim=64, num_heads=2)
    assert model_width(model) == 64
    assert model_width(torch.compile(model)) == 64
    assert model_width(torch.nn.Linear(2, 2)) is None


def test_a_segmentation_model_has_its_backbones_width():
    from cpvt.models.segmentation import SegmentationModel

    backbone = cpvt.create_model("deit_micro", embed_dim=64, num_heads=2)
    assert model_width(SegmentationModel(backbone, num_classes=3)) == 64
