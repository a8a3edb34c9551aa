"""Write tests/data/hf_cvt_fixture.safetensors: a small Hugging Face
``CvtForImageClassification`` (random weights, BatchNorm statistics moved off
their defaults), inputs and its logits, so the default test suite can check the
``cvt-hf`` and ``cvt-official`` converters without transformers installed.

    .venv/bin/pip install transformers && .venv/bin/python scripts/make_hf_fixture.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import CvtConfig, CvtForImageClassification

OUT = Path(__file__).resolve().parents[1] / "tests" / "data"
# CvT-13's layout (7x7/4, 3x3/2, 3x3/2 embeddings; class token in the last stage), narrower and shallower.
CONFIG = dict(embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=10)  # depth[i] > i: transformers indexes its drop-path list by stage


def main() -> None:
    torch.manual_seed(0)
    model = CvtForImageClassification(CvtConfig(**CONFIG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
        xs = {"x_base": torch.randn(2, 3, 64, 64), "x_other": torch.randn(2, 3, 96, 64)}
        tensors = {f"state.{k}": v.contiguous() for k, v in model.state_dict().items()}
        tensors.update(xs)
        tensors.update({f"logits.{n}": model(pixel_values=x).logits for n, x in xs.items()})
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "config": json.dumps(CONFIG)}
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT / "hf_cvt_fixture.safetensors", metadata=meta)
    print(f"wrote hf_cvt_fixture.safetensors with transformers {transformers.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
