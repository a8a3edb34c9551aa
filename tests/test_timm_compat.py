"""timm compatibility: key names, strict loading, identical logits.

The default tests use a fixture written by timm itself (scripts/make_timm_fixture.py);
the tests marked `timm` run against the installed library (make test-timm).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import cpvt
from conftest import need

DATA = Path(__file__).parent / "data"


def test_deit_tiny_has_timms_keys_and_shapes():
    expected = json.loads((DATA / "timm_deit_tiny_keys.json").read_text())["keys"]
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in cpvt.create_model("deit_tiny").state_dict().items()}
    assert ours == expected


def test_timm_state_dict_loads_strict_and_gives_timms_logits():
    with safe_open(DATA / "timm_vit_fixture.safetensors", "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(f.metadata()["config"])
    state = {k[len("state.") :]: v for k, v in t.items() if k.startswith("state.")}
    config.pop("dynamic_img_size")  # ours always is
    model = cpvt.create_model("deit_tiny", **config).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.allclose(model(t["x_base"]), t["logits_base"], atol=1e-5)
        # at a grid the APE never saw, our resampling matches timm's dynamic_img_size
        assert torch.allclose(model(t["x_other"]), t["logits_other"], atol=1e-5)


@pytest.mark.timm
def test_against_installed_timm():
    timm = need("timm", reason="timm needs the full PyTorch build: run `make test-timm`")
    torch.manual_seed(0)
    theirs = timm.create_model("deit_tiny_patch16_224", pretrained=False, dynamic_img_size=True).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = cpvt.create_model("deit_tiny").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        for size in ((224, 224), (384, 320)):
            x = torch.randn(2, 3, *size)
            assert torch.allclose(ours(x), theirs(x), atol=1e-5), size
