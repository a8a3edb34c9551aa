"""The engine on a GPU: training under bf16 autocast, the loop's synchronisation interval, frozen compiled
inference and a checkpoint that moves to the CPU.

Marked ``cuda`` and kept out of the default run: ``make test-cuda`` runs them on a machine with a GPU
(``scripts/gpu_check.sh``). ``CPVT_TEST_DEVICE=cpu`` runs the same tests on the CPU, the dry run of that
script; with the default ``cuda`` and no GPU they fail, never skip.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import poison_batch, tiny_config

import cpvt
from cpvt.models import model_from_checkpoint
from cpvt.train.engine import sync_interval, train
from cpvt.utils.compiling import compile_model
from cpvt.utils.errors import TrainingDiverged

pytestmark = pytest.mark.cuda

DEVICE = torch.device(os.environ.get("CPVT_TEST_DEVICE", "cuda"))


@pytest.fixture(autouse=True)
def device_present():
    if DEVICE.type == "cuda":
        assert torch.cuda.is_available(), "no CUDA device: run these on a GPU machine, or CPVT_TEST_DEVICE=cpu"


def test_a_run_trained_on_the_device_predicts_the_same_on_the_cpu(tmp_path):
    metrics = train(tiny_config(tmp_path, device=DEVICE.type, epochs=1, amp="auto"))
    assert torch.isfinite(torch.tensor(metrics["train_loss"])) and metrics["best_val_top1"] >= 0
    model = model_from_checkpoint(tmp_path / "last.safetensors").eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        on_cpu = model(x)
        on_device = model.to(DEVICE)(x.to(DEVICE)).cpu()
    assert torch.allclose(on_cpu, on_device, atol=1e-4, rtol=1e-4)


def test_a_nan_loss_is_caught_at_the_devices_check_before_any_checkpoint(tmp_path, monkeypatch):
    poison_batch(monkeypatch, 3)
    every = sync_interval(DEVICE)
    expected = "became nan at epoch 1 step 3" if every == 1 else "was not finite at a step of epoch 1 between step 1"
    with pytest.raises(TrainingDiverged, match=expected):
        train(tiny_config(tmp_path, device=DEVICE.type, epochs=1, amp="off"))
    assert not (tmp_path / "last.safetensors").exists()  # no checkpoint of a non-finite step


@pytest.mark.parametrize("name", ["cpvt_micro", "deit_micro"])
def test_frozen_compiled_inference_matches_eager_at_two_sizes(name):
    torch.manual_seed(0)
    model = cpvt.create_model(name, num_classes=10).eval().to(DEVICE)
    frozen = compile_model(model, dynamic=True, frozen=True)
    for size in (32, 48):
        x = torch.randn(3, 3, size, size, device=DEVICE)
        with torch.no_grad():
            assert torch.allclose(frozen(x), model(x), atol=1e-4, rtol=1e-4)
        with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            assert torch.allclose(frozen(x).float(), model(x).float(), atol=5e-2, rtol=5e-2)
