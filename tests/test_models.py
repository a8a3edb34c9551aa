"""Registry-wide tests: every named model runs, learns, saves and is deterministic."""

import pytest
import torch

import cpvt
from conftest import small_sizes
from cpvt.layers.drop_path import DropPath

ALL = cpvt.list_models()


def _large(name: str) -> bool:
    """Base- and large-width models (40M to 100M parameters). They are the small ones' configurations at a
    greater width and depth, and hold about 80% of the registry's parameters, so their registry-wide tests run
    in the slow tier (``make test-slow``, which CI runs too) to keep the default suite within its time."""
    return name.startswith(("deit_base", "cpvt_b_")) or name == "cpvt_b" or name.endswith(("_base", "_large"))


# every registry model; the large ones marked slow
EVERY = [pytest.param(n, marks=pytest.mark.slow) if _large(n) else n for n in ALL]


def test_registry_is_populated():
    assert len(ALL) >= 30
    for family in ("deit_tiny", "deit_small", "deit_base", "cpvt_ti", "cpvt_s", "cpvt_b", "deit_micro", "cpvt_micro"):
        assert family in ALL
    assert cpvt.list_models("cpvt_ti*") == sorted(
        ["cpvt_ti", "cpvt_ti_alibi", "cpvt_ti_ape", "cpvt_ti_gap", "cpvt_ti_gap_plus", "cpvt_ti_lookhere",
         "cpvt_ti_plus", "cpvt_ti_repcpe", "cpvt_ti_rope_mixed"]
    )


# `built` (conftest.py) is the model named by the parameter, shared by that model's tests and freed after them.
@pytest.mark.parametrize("built", EVERY, indirect=True)
def test_forward_any_resolution(built):
    model = built.eval()
    for h, w in small_sizes(model):
        with torch.no_grad():
            feats = model.forward_features(torch.randn(2, 3, h, w))
            out = model.forward_head(feats)
        grid = (h // model.patch_size) * (w // model.patch_size)
        assert feats.shape == (2, grid + model.num_prefix, model.embed_dim)
        assert out.shape == (2, model.num_classes)
        assert torch.isfinite(out).all()
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.embed_dim)


@pytest.mark.parametrize("built", EVERY, indirect=True)
def test_backward_reaches_every_parameter(built):
    model = built.train()
    model.zero_grad(set_to_none=True)
    h, w = small_sizes(model)[2]  # the non-square one
    model(torch.randn(2, 3, h, w)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    model.zero_grad(set_to_none=True)
    assert not missing, f"no gradient reached: {missing}"


@pytest.mark.parametrize("built", EVERY, indirect=True)
def test_state_dict_round_trip(built):
    src = built.eval()
    torch.manual_seed(1)
    dst = cpvt.create_model(src.model_name, **{k: v for k, v in src.model_args.items()}).eval()
    x = torch.randn(1, 3, *small_sizes(src)[0])
    with torch.no_grad():
        assert not torch.equal(src(x), dst(x))  # different seeds: different weights
        result = dst.load_state_dict(src.state_dict(), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert torch.equal(src(x), dst(x))


@pytest.mark.parametrize("built", EVERY, indirect=True)
def test_eval_switches_off_randomness_and_batch_statistics(built):
    """With every dropout and drop path turned up to p=0.5, eval() gives each image the output it gets alone
    (no batch statistics, no random masks), whatever the RNG; train() with the same layers does not."""
    model = built
    stochastic = [m for m in model.modules() if isinstance(m, (DropPath, torch.nn.Dropout))]
    assert stochastic, "every registry model has dropout or drop path layers"
    saved_p, saved_buffers = [m.p for m in stochastic], {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(2, 3, *small_sizes(model)[1])
    try:
        for m in stochastic:
            m.p = 0.5
        model.eval()
        with torch.no_grad():
            torch.manual_seed(1)
            batched = model(x)
            torch.manual_seed(2)
            alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
        torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-4)
        model.train()  # the check above can fail: in training mode the same layers change the output
        with torch.no_grad():
            torch.manual_seed(1)
            assert not torch.allclose(model(x), batched, atol=1e-3)
    finally:
        for m, p in zip(stochastic, saved_p):
            m.p = p
        model.load_state_dict(saved_buffers, strict=False)  # BatchNorm statistics moved in training mode
        model.eval()


def test_parameter_counts_match_the_paper():
    with torch.device("meta"):
        counts = {n: sum(p.numel() for p in cpvt.create_model(n).parameters()) for n in ("deit_tiny", "cpvt_ti", "cpvt_ti_plus")}
    assert counts == {"deit_tiny": 5_717_416, "cpvt_ti": 5_681_512, "cpvt_ti_plus": 5_689_192}


def test_model_api_and_overrides():
    model = cpvt.create_model("cpvt_micro", num_classes=7, in_chans=1, img_size=48, patch_size=8, drop_path_rate=0.1)
    assert model(torch.randn(2, 1, 48, 48)).shape == (2, 7)
    assert model.blocks[-1].drop_path1.p == pytest.approx(0.1) and model.blocks[0].drop_path1.p == 0
    model.reset_classifier(3)
    assert model(torch.randn(1, 1, 16, 24)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, model.embed_dim)
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)
    assert "cls_token" in model.no_weight_decay() and "pos_block.0.proj.0.weight" in model.no_weight_decay()
    assert cpvt.create_model("deit_micro", pos="sincos").model_args["pos"] == "sincos"


def test_initialisation_follows_the_spec():
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_ti")
    assert model.blocks[0].mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0
    conv = model.pos_block.get_submodule("0").proj[0]
    assert conv.weight.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.1)  # fan_out = 3*3*C/C
    assert conv.bias.abs().sum() == 0


def test_gap_models_have_no_class_token():
    model = cpvt.create_model("cpvt_micro_gap")
    assert model.cls_token is None and model.num_prefix == 0
    assert "cls_token" not in model.state_dict()


def test_flops_include_attention():
    from cpvt.models.info import model_info

    info = model_info(cpvt.create_model("deit_tiny"), 224)
    assert info["flops"] == pytest.approx(2.51e9, rel=0.01)
    # Without the attention formula PyTorch's counter sees 2.15 GFLOPs; ours must not.
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        cpvt.create_model("deit_tiny").eval()(torch.zeros(1, 3, 224, 224))
    attention = 12 * 2 * 2 * 197 * 197 * 192  # 12 blocks, QK^T and AV, 2 FLOPs per MAC
    assert info["flops"] - plain.get_total_flops() == attention


@pytest.mark.slow
@pytest.mark.parametrize("built", ALL, indirect=True)
def test_runs_at_large_resolutions(built):
    """Every model at 224, 384 and 512 (micro: 32, 48, 64) with no fine-tuning: finite logits, and at each new
    size the logits of that size, not the training size's (the image is the training-size one, resized)."""
    model = built.eval()
    sizes = (32, 48, 64) if model.img_size[0] == 32 else (224, 384, 512)
    torch.manual_seed(0)
    image = torch.randn(1, 3, sizes[0], sizes[0])
    with torch.no_grad():
        base = model(image)
        assert base.shape == (1, model.num_classes) and torch.isfinite(base).all()
        for s in sizes[1:] + ((sizes[1], sizes[0]),):
            s = (s, s) if isinstance(s, int) else s
            x = torch.nn.functional.interpolate(image, size=s, mode="bilinear", align_corners=False)
            feats = model.forward_features(x)
            grid = (s[0] // model.patch_size) * (s[1] // model.patch_size)
            assert feats.shape == (1, grid + model.num_prefix, model.embed_dim), s  # it ran at the new size
            out = model.forward_head(feats)
            assert out.shape == (1, model.num_classes), s
            assert torch.isfinite(out).all(), s
            assert not torch.allclose(out, base, atol=1e-4), f"the output at {s} is the output at {sizes[0]}"
