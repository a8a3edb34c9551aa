"""Print how closely converted weights reproduce the source library's logits.

Random weights (moved off their init; BatchNorm statistics too), two input sizes.
Runs whichever comparisons the environment can: timm's Twins needs the full
PyTorch build (`.venv-timm`), transformers' CvT installs into `.venv`:

    .venv-timm/bin/python scripts/check_converters.py
    .venv/bin/python scripts/check_converters.py
"""

from __future__ import annotations

import importlib.util

import torch

from cpvt.deploy.convert import load_converted

SIZES = ((224, 224), (256, 192))


def _perturb(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)


def _compare(name: str, theirs, forward, fmt: str, library: str) -> None:
    _perturb(theirs)
    ours = load_converted(name, theirs.state_dict(), fmt)
    n_theirs, n_ours = (sum(p.numel() for p in m.parameters()) for m in (theirs, ours))
    with torch.no_grad():
        for size in SIZES:
            x = torch.randn(2, 3, *size)
            diff = (ours(x) - forward(theirs, x)).abs().max().item()
            print(f"| {library} | {name} | {n_theirs:,} | {n_ours:,} | {size[0]}x{size[1]} | {diff:.1e} |", flush=True)


def main() -> None:
    torch.manual_seed(0)
    print("| library | model | their params | ours | input | max abs logit diff |\n|---|---|---:|---:|---|---:|")
    if importlib.util.find_spec("timm"):
        import timm

        for name in ("twins_pcpvt_small", "twins_pcpvt_base", "twins_pcpvt_large", "twins_svt_small",
                     "twins_svt_base", "twins_svt_large"):
            _compare(name, timm.create_model(name).eval(), lambda m, x: m(x), "timm-twins", f"timm {timm.__version__}")
    if importlib.util.find_spec("transformers"):
        import transformers

        for name, depth in (("cvt_13", [1, 2, 10]), ("cvt_21", [1, 4, 16])):
            theirs = transformers.CvtForImageClassification(transformers.CvtConfig(depth=depth, num_labels=1000)).eval()
            _compare(name, theirs, lambda m, x: m(pixel_values=x).logits, "cvt-hf", f"transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
