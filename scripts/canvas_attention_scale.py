"""Probe: does scaling attention logits with the log of the sequence length recover the Canvas whole-frame loss?

    python scripts/canvas_attention_scale.py RUN [RUN ...] [--size 360x480] [--train-tokens 300] [--split test]
    python scripts/canvas_attention_scale.py RUN [RUN ...] --local 15x20  # local attention instead (see below)

On CamVid's Canvas protocol every model, no position encoding included, scores 4-11 mIoU less on the whole
360x480 frame (2,700 tokens) than on 120x160 windows of it (300 tokens, the training crop). One candidate cause
is that softmax attention spreads thinner over 9x more keys; Chiang & Cholak (2022, "Overcoming a theoretical
limitation of self-attention", arXiv 2202.12172) propose multiplying the logits by log(n_test) / log(n_train)
to keep its entropy. This script scores each run on whole frames as trained and with every attention module's
logit scale multiplied by that factor (no retraining), and prints mIoU for both. Needs the runs' checkpoints,
so it runs where the sweep trained them; a run folder is scored on its last checkpoint, as the sweep's records are.

``--local HxW`` tests the other candidate, context the training crops never mixed: every patch token attends
only to the class token and to the patch tokens of its own HxW group of the grid (15x20: the training crop's
grid, so the groups are the 120x160 windows), through an additive mask, while everything else (the class
token, the PEG's convolution, the MLPs) still runs over the whole frame in one pass.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

import cpvt.train.evaluate as evaluate
from cpvt.layers.attention import Attention


def group_mask(gh: int, gw: int, h: int, w: int, prefix: int = 1) -> torch.Tensor:
    """(T, T) additive mask: patch tokens see the prefix tokens and their own h x w group; prefix tokens see all."""
    r, c = torch.arange(gh).repeat_interleave(gw), torch.arange(gw).repeat(gh)
    group = torch.cat([torch.full((prefix,), -1), (r // h) * ((gw + w - 1) // w) + c // w])
    allowed = (group[:, None] == group[None, :]) | (group[:, None] < 0) | (group[None, :] < 0)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--size", default="360x480", help="whole-frame test size HxW")
    p.add_argument("--train-tokens", type=int, default=15 * 20, help="tokens of a training crop (120x160, patch 8)")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--split", default="test")
    p.add_argument("--local", default="", help="HxW: attend inside token groups of this size instead of scaling")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    gh, gw = h // args.patch, w // args.patch
    factor = math.log(gh * gw) / math.log(args.train_tokens)
    local = tuple(int(v) for v in args.local.split("x")) if args.local else None
    mask = group_mask(gh, gw, *local) if local else None
    build, sdpa = evaluate._trained_model, F.scaled_dot_product_attention

    def local_sdpa(q, k, v, attn_mask=None, **kw):  # the whole frame's sequence (class token + grid) gets the mask
        if q.shape[-2] == mask.shape[0] and attn_mask is None:
            attn_mask = mask.to(q.dtype)[None, None]
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    def scaled_model(run, overrides, dev):
        ckpt, model = build(run, overrides, dev)
        for m in model.modules():
            if isinstance(m, Attention):
                m.scale *= factor
        return ckpt, model

    # a run folder's last checkpoint, the one the sweep's records score (a folder alone would give its best)
    runs = [str(Path(r) / "last.safetensors") if Path(r).is_dir() else r for r in args.runs]
    rows = {}
    for probed in (False, True):  # the models as trained, then with the probe's change
        if probed:
            if local:
                F.scaled_dot_product_attention = local_sdpa
            else:
                evaluate._trained_model = scaled_model
        try:
            for r in evaluate.evaluate_runs(runs, img_sizes=[(h, w)], frames="native", windows=[None],
                                            split=args.split):
                rows.setdefault(r["run"], []).append(r["sizes"][f"{h}x{w}"]["miou"])
        finally:
            evaluate._trained_model, F.scaled_dot_product_attention = build, sdpa
    change = (f"attention inside {args.local} token groups" if args.local else
              f"logit scale x{factor:.3f} = log({gh * gw}) / log({args.train_tokens})")
    print(f"whole {h}x{w} frames, {args.split} split, mIoU %; {change}")
    print(f"| run | as trained | {'local attention' if args.local else 'log-length scaled'} | change |\n|---|---:|---:|---:|")
    for run, (plain, probed) in rows.items():
        print(f"| {run} | {plain:.2f} | {probed:.2f} | {probed - plain:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
