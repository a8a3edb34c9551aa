"""--compile: torch.compile'd training and evaluation agree with eager, and many sizes share one compilation."""

from __future__ import annotations

import pytest
import torch
from conftest import run_weights, tiny_config

from cpvt.study.reproduce import run_name
from cpvt.train.engine import train
from cpvt.train.evaluate import evaluate_runs

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def tiny(out, **kw):
    """conftest's tiny config: one epoch of 4 steps of ``cpvt_micro``, the recipe's warm-up, no augmentation."""
    return tiny_config(out, **{"model": "cpvt_micro", "epochs": 1, "train_limit": 128, "warmup_epochs": 1,
                               "randaug_n": 0, "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0, "drop_path": 0.0, **kw})


def test_compiled_training_matches_eager(tmp_path):
    train(tiny(tmp_path / "eager", amp="off"))
    metrics = train(tiny(tmp_path / "compiled", amp="off", compile=True))
    a, b = run_weights(tmp_path / "eager"), run_weights(tmp_path / "compiled")
    keys = [k for k in a if "/" not in k]  # the model's weights
    assert keys and max((a[k] - b[k]).abs().max().item() for k in keys) < 1e-3  # fused kernels round differently
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_compiled_evaluation_agrees_and_compiles_once_for_all_sizes(tmp_path):
    train(tiny(tmp_path / "run"))
    sizes = [16, 24, 32, 40]
    eager = evaluate_runs([str(tmp_path / "run")], img_sizes=sizes)[0]
    torch._dynamo.reset()  # each count starts from an empty cache (otherwise the second run reuses the first one's graphs)
    many = evaluate_runs([str(tmp_path / "run")], img_sizes=sizes, compile=True)[0]
    torch._dynamo.reset()
    two = evaluate_runs([str(tmp_path / "run")], img_sizes=sizes[:2], compile=True)[0]
    for s in map(str, sizes):  # fused kernels: logits agree to a few 1e-3 (bf16), so top-1 to within a couple of images
        assert abs(many["sizes"][s]["top1"] - eager["sizes"][s]["top1"]) <= 100 * 2 / 64
        assert abs(many["sizes"][s]["loss"] - eager["sizes"][s]["loss"]) < 0.02
    # symbolic sizes: four sizes build no more graphs than two (a recompile per size would add them)
    assert many["compile"]["graphs"] == two["compile"]["graphs"] > 0


def test_compile_is_not_part_of_a_runs_identity(tmp_path):
    assert run_name(tiny(tmp_path)) == run_name(tiny(tmp_path, compile=True))


@pytest.mark.parametrize("name", ["cpvt_micro", pytest.param("deit_micro_rope", marks=pytest.mark.slow)])
def test_frozen_compiled_inference_matches_eager_at_two_sizes(name):
    """``cpvt eval --compile``'s path: inductor with freezing (weights folded in and pre-packed), one
    dynamic graph for both sizes, logits equal to eager's within fp32 rounding."""
    from cpvt.models import create_model
    from cpvt.utils.compiling import compile_model

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_model(name).eval()
    frozen = compile_model(model, dynamic=True, frozen=True)
    with torch.inference_mode():
        for size in (32, 48):
            x = torch.randn(4, 3, size, size)
            assert torch.allclose(frozen(x), model(x), atol=1e-4, rtol=1e-4), size
