"""Pyramid models (Twins, CvT) and the converters from timm / Hugging Face / the official CvT layout.

The default tests read fixtures written by the libraries themselves
(scripts/make_timm_fixture.py, scripts/make_hf_fixture.py). The tests marked
``timm`` (make test-timm) and the ones needing ``transformers`` (make test-hf)
compare against the installed libraries at full size; they skip with the reason
when the library is absent, except under those make targets, where they fail.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import cpvt
from conftest import need
from cpvt.deploy.convert import FORMATS, _rename, convert_state_dict, detect_format, load_converted
from cpvt.models import model_from_checkpoint

DATA = Path(__file__).parent / "data"

# Official parameter counts (timm's Twins; the CvT paper's "20M / 32M"). CvT's official layout
# also holds a query conv + BatchNorm in the last block (9*384 + 2*384 = 4,224 parameters) whose
# output never reaches the class token; our cvt_* leave it out.
OFFICIAL = {
    "twins_pcpvt_small": 24_106_216, "twins_pcpvt_base": 43_828_456, "twins_pcpvt_large": 60_989_672,
    "twins_svt_small": 24_060_776, "twins_svt_base": 56_070_952, "twins_svt_large": 99_271_400,
    "cvt_13": 19_997_480 - 4_224, "cvt_21": 31_622_696 - 4_224,
}


def _count(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in cpvt.create_model(name).parameters())


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameter_counts_match_the_official_ones(name):
    assert _count(name) == OFFICIAL[name]


def _fixture(path: Path) -> tuple[dict, dict]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def _prefixed(t: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}


@pytest.mark.parametrize("kind", ["pcpvt", "svt"])
def test_timm_twins_weights_give_timms_logits(kind):
    t, meta = _fixture(DATA / "timm_twins_fixture.safetensors")
    c = json.loads(meta[kind])
    args = dict(img_size=64, num_classes=10, embed_dims=c["embed_dims"], num_heads=c["num_heads"],
                mlp_ratios=c["mlp_ratios"], depths=c["depths"], sr_ratios=c["sr_ratios"])
    if "wss" in c:
        args["windows"] = c["wss"][0]
    state = _prefixed(t, f"{kind}.state.")
    assert detect_format(state) == "timm-twins"
    model = load_converted(f"twins_{kind}_small", state, **args)
    with torch.no_grad():
        for x in ("x_base", "x_other"):  # 96x64: windows that do not divide the grid are zero-padded as in Twins
            assert torch.allclose(model(t[x]), t[f"{kind}.logits.{x}"], atol=1e-5), x


def _hf_fixture():
    t, meta = _fixture(DATA / "hf_cvt_fixture.safetensors")
    c = json.loads(meta["config"])
    args = dict(img_size=64, num_classes=c["num_labels"], embed_dims=c["embed_dim"], num_heads=c["num_heads"],
                depths=c["depth"])
    return t, args


def test_hf_cvt_weights_give_hf_logits():
    t, args = _hf_fixture()
    state = _prefixed(t, "state.")
    assert detect_format(state) == "cvt-hf"
    model = load_converted("cvt_13", state, **args)
    assert model.stages[0].blocks[0].mlp.act.__class__.__name__ == "GELU"  # transformers runs exact GELU
    with torch.no_grad():
        for x in ("x_base", "x_other"):
            assert torch.allclose(model(t[x]), t[f"logits.{x}"], atol=1e-5), x


# microsoft/CvT's key names, written from its lib/models/cls_cvt.py (independently of cpvt.deploy.convert):
# the same tensors as the Hugging Face fixture, renamed the way transformers' conversion script maps them.
_HF_TO_MS = [
    (r"^cvt\.encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.projection\.", r"stage\1.patch_embed.proj."),
    (r"^cvt\.encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.normalization\.", r"stage\1.patch_embed.norm."),
    (r"^cvt\.encoder\.stages\.(\d+)\.cls_token", r"stage\1.cls_token"),
    (r"^cvt\.encoder\.stages\.(\d+)\.layers\.", r"stage\1.blocks."),
    (r"attention\.attention\.convolution_projection_(q|k|v)\w*\.convolution_projection\.convolution\.",
     r"attn.conv_proj_\1.conv."),
    (r"attention\.attention\.convolution_projection_(q|k|v)\w*\.convolution_projection\.normalization\.",
     r"attn.conv_proj_\1.bn."),
    (r"attention\.attention\.projection_(q|k|v)\w*?\.", r"attn.proj_\1."),
    (r"attention\.output\.dense\.", "attn.proj."), (r"intermediate\.dense\.", "mlp.fc1."),
    (r"output\.dense\.", "mlp.fc2."), (r"layernorm_before\.", "norm1."), (r"layernorm_after\.", "norm2."),
    (r"^layernorm\.", "norm."), (r"^classifier\.", "head."),
]


def _to_ms(state: dict) -> dict:
    return _rename(state, _HF_TO_MS)


def test_official_cvt_layout_loads_and_matches():
    t, args = _hf_fixture()
    ms = _to_ms(_prefixed(t, "state."))
    assert "stage2.blocks.0.attn.conv_proj_q.conv.weight" in ms and "stage0.patch_embed.proj.weight" in ms
    assert detect_format(ms) == "cvt-official"
    # The official forward uses QuickGELU; with exact GELU (what the HF fixture ran) the logits must match.
    model = load_converted("cvt_13", ms, act="gelu", **args)
    with torch.no_grad():
        assert torch.allclose(model(t["x_base"]), t["logits.x_base"], atol=1e-5)
    official = load_converted("cvt_13", ms, **args)
    assert official.stages[0].blocks[0].mlp.act.__class__.__name__ == "QuickGELU"
    with torch.no_grad():
        assert not torch.allclose(official(t["x_base"]), t["logits.x_base"], atol=1e-5)


def test_converter_errors_are_clear():
    t, args = _hf_fixture()
    state = _prefixed(t, "state.")
    with pytest.raises(ValueError, match="unknown weight format"):
        convert_state_dict(state, "caffe")
    with pytest.raises(ValueError, match="cannot tell"):
        detect_format({"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="do not fit cvt_13: shape mismatch"):
        load_converted("cvt_13", state, "cvt-hf", **{**args, "embed_dims": (8, 16, 32), "num_heads": (1, 2, 4)})
    with pytest.raises(ValueError, match="missing"):
        load_converted("cvt_13", state, "cvt-hf", **{**args, "depths": (1, 2, 4)})
    assert set(FORMATS) == {"timm-twins", "cvt-official", "cvt-hf"}
    # the class count follows the weights' classifier
    assert load_converted("cvt_13", state, **{k: v for k, v in args.items() if k != "num_classes"}).num_classes == 10


def test_pyramid_stages_and_class_token():
    model = cpvt.create_model("cvt_micro").eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, output_fmt="NLC")
    # one map per stage, the class token (last stage) dropped: grids 16x24, 8x12, 4x6
    assert [m.shape[1:] for m in maps] == [(384, 32), (96, 64), (24, 128)]
    assert final.shape[1:] == (25, 128)  # forward_features keeps the class token
    assert model.num_prefix == 1 and model.stages[-1].cls_token is not None and model.stages[0].cls_token is None
    twins = cpvt.create_model("twins_pcpvt_micro")
    assert twins.num_prefix == 0 and all(s.cls_token is None for s in twins.stages)
    assert [len(s.pos_block.positions) for s in twins.stages] == [1, 1, 1]  # one PEG per stage, after block 0


def test_svt_alternates_local_and_subsampled_attention():
    with torch.device("meta"):
        model = cpvt.create_model("twins_svt_small")
    kinds = [(b.attn.window, b.attn.sr_ratio) for b in model.stages[0].blocks]
    assert kinds == [(7, 1), (0, 8)]
    assert [b.attn.sr_ratio for b in model.stages[3].blocks] == [1, 1, 1, 1]


def test_windowed_attention_equals_attention_inside_each_window():
    from cpvt.layers import Attention
    from cpvt.pos import BlockPosition, Grid

    torch.manual_seed(0)
    local = Attention(16, 2, window=4).eval()
    full = Attention(16, 2).eval()
    full.load_state_dict(local.state_dict())
    x = torch.randn(1, 8 * 8, 16)
    with torch.no_grad():
        y = local(x, BlockPosition(Grid(8, 8))).reshape(1, 8, 8, 16)
        window = x.reshape(1, 8, 8, 16)[:, 4:, :4].reshape(1, 16, 16)  # the bottom-left group, alone
        ref = full(window, BlockPosition(Grid(4, 4))).reshape(1, 4, 4, 16)
    assert torch.allclose(y[:, 4:, :4], ref, atol=1e-6)


def test_position_encoding_overrides_reach_every_stage():
    model = cpvt.create_model("twins_pcpvt_micro", pos="ape")
    assert [s.pos_slots for s in model.stages] == [("pos_embed",)] * 3
    peg5 = cpvt.create_model("twins_pcpvt_micro", peg_kernel_size=5)
    assert all(s.pos_block.kernel_size == 5 for s in peg5.stages)
    with pytest.raises(ValueError, match="RoPE"):
        cpvt.create_model("twins_pcpvt_micro", pos="rope")(torch.randn(1, 3, 32, 32))


@pytest.mark.timm
@pytest.mark.parametrize("name", sorted(n for n in OFFICIAL if n.startswith("twins")))
def test_against_installed_timm_twins(name):
    timm = need("timm", reason="timm needs the full PyTorch build: run `make test-timm`")
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    assert sum(p.numel() for p in theirs.parameters()) == OFFICIAL[name]
    ours = load_converted(name, theirs.state_dict(), "timm-twins")
    with torch.no_grad():
        for size in ((224, 224), (256, 192)):
            x = torch.randn(1, 3, *size)
            assert torch.allclose(ours(x), theirs(x), atol=1e-5), size


@pytest.mark.parametrize("name,depth", [("cvt_13", [1, 2, 10]), ("cvt_21", [1, 4, 16])])
def test_against_installed_transformers_cvt(name, depth):
    transformers = need("transformers", reason="transformers is not installed: run `make test-hf`")
    torch.manual_seed(0)
    theirs = transformers.CvtForImageClassification(transformers.CvtConfig(depth=depth, num_labels=1000)).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    assert sum(p.numel() for p in theirs.parameters()) == OFFICIAL[name] + 4_224
    ours = load_converted(name, theirs.state_dict(), "cvt-hf")
    with torch.no_grad():
        for size in ((224, 224), (256, 192)):
            x = torch.randn(1, 3, *size)
            assert torch.allclose(ours(x), theirs(pixel_values=x).logits, atol=1e-5), size


def test_pyramid_checkpoint_rebuilds_the_same_model(tmp_path):
    from cpvt.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = cpvt.create_model("cvt_micro", num_classes=5).eval()
    save_checkpoint(tmp_path / "m.safetensors", model, config={}, classes=list("abcde"))
    again = model_from_checkpoint(tmp_path / "m.safetensors").eval()
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_convert_command_writes_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from cpvt.cli import main

    t, args = _hf_fixture()
    save_file({k: v.contiguous() for k, v in _prefixed(t, "state.").items()}, str(tmp_path / "hf.safetensors"))
    sets = [f"--set=model.{k}={tuple(v) if isinstance(v, list) else v}" for k, v in args.items()]
    assert main(["convert", str(tmp_path / "hf.safetensors"), str(tmp_path / "ours.safetensors"), "--model", "cvt_13",
                 *sets]) == 0
    model = model_from_checkpoint(tmp_path / "ours.safetensors").eval()
    with torch.no_grad():
        assert torch.allclose(model(t["x_base"]), t["logits.x_base"], atol=1e-5)
