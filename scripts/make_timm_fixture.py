"""Write tests/data/timm_vit_fixture.safetensors (a small timm ViT) and
tests/data/timm_twins_fixture.safetensors (small Twins PCPVT and SVT): state
dicts, inputs and timm's own logits, so the default test suite can check timm
compatibility and the Twins converter without timm installed.

Run in the full-PyTorch environment (`make timm-env`):
    .venv-timm/bin/python scripts/make_timm_fixture.py          # both
    .venv-timm/bin/python scripts/make_timm_fixture.py twins    # only the Twins fixture
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models.twins import Twins
from timm.models.vision_transformer import VisionTransformer

OUT = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    import sys

    if sys.argv[1:] == ["twins"]:
        twins_fixture()
        return
    torch.manual_seed(0)
    config = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10, dynamic_img_size=True)
    model = VisionTransformer(**config).eval()
    with torch.no_grad():  # move every tensor away from its init so all weights matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x_base = torch.randn(2, 3, 32, 32)
    x_other = torch.randn(2, 3, 48, 64)  # a grid the APE never saw: timm resamples it
    with torch.no_grad():
        tensors = {f"state.{k}": v.contiguous() for k, v in model.state_dict().items()}
        tensors.update(x_base=x_base, x_other=x_other, logits_base=model(x_base), logits_other=model(x_other))
    meta = {"timm": timm.__version__, "torch": torch.__version__, "config": json.dumps(config)}
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT / "timm_vit_fixture.safetensors", metadata=meta)

    # The key names and shapes of timm's deit_tiny_patch16_224, for the key-name test.
    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    keys = {k: list(v.shape) for k, v in deit.state_dict().items()}
    (OUT / "timm_deit_tiny_keys.json").write_text(json.dumps({"timm": timm.__version__, "keys": keys}, indent=1))
    twins_fixture()
    print(f"wrote fixtures with timm {timm.__version__}, torch {torch.__version__}")


# Small Twins: four stages at 64 px (grids 16, 8, 4, 2). The SVT windows (4) do not divide every
# grid of the 96x64 input, so the zero-padded windows are exercised too.
TWINS = {
    "pcpvt": dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2), depths=(1, 2, 2, 1),
                  sr_ratios=(4, 2, 2, 1)),
    "svt": dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2), depths=(2, 2, 2, 2),
                sr_ratios=(4, 2, 2, 1), wss=(4, 4, 4, 4)),
}


def twins_fixture() -> None:
    torch.manual_seed(0)
    tensors, meta = {}, {"timm": timm.__version__, "torch": torch.__version__}
    xs = {"x_base": torch.randn(2, 3, 64, 64), "x_other": torch.randn(2, 3, 96, 64)}
    tensors.update(xs)
    for kind, config in TWINS.items():
        model = Twins(img_size=64, patch_size=4, num_classes=10, **config).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            tensors.update({f"{kind}.state.{k}": v.contiguous() for k, v in model.state_dict().items()})
            tensors.update({f"{kind}.logits.{n}": model(x) for n, x in xs.items()})
        meta[kind] = json.dumps(config)
    save_file(tensors, OUT / "timm_twins_fixture.safetensors", metadata=meta)


if __name__ == "__main__":
    main()
