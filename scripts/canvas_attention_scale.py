"""Probe: does scaling attention logits with the log of the sequence length recover the Canvas whole-frame loss?

    python scripts/canvas_attention_scale.py RUN [RUN ...] [--size 360x480] [--train-tokens 300] [--split test]

On CamVid's Canvas protocol every model, no position encoding included, scores 4-9 mIoU less on the whole
360x480 frame (2,700 tokens) than on 120x160 windows of it (300 tokens, the training crop). One candidate cause
is that softmax attention spreads thinner over 9x more keys; Chiang & Cholak (2022, "Overcoming a theoretical
limitation of self-attention", arXiv 2202.12172) propose multiplying the logits by log(n_test) / log(n_train)
to keep its entropy. This script scores each run on whole frames as trained and with every attention module's
logit scale multiplied by that factor (no retraining), and prints mIoU for both. Needs the runs' checkpoints,
so it runs where the sweep trained them.
"""

from __future__ import annotations

import argparse
import math

import cpvt.train.evaluate as evaluate
from cpvt.layers.attention import Attention


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--size", default="360x480", help="whole-frame test size HxW")
    p.add_argument("--train-tokens", type=int, default=15 * 20, help="tokens of a training crop (120x160, patch 8)")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    factor = math.log((h // args.patch) * (w // args.patch)) / math.log(args.train_tokens)
    build = evaluate._trained_model

    def scaled(f: float):
        def trained_model(run, overrides, dev):
            ckpt, model = build(run, overrides, dev)
            for m in model.modules():
                if isinstance(m, Attention):
                    m.scale *= f
            return ckpt, model

        return trained_model

    rows = {}
    for f in (1.0, factor):
        evaluate._trained_model = scaled(f)
        try:
            for r in evaluate.evaluate_runs(args.runs, img_sizes=[(h, w)], frames="native", windows=[None],
                                            split=args.split):
                rows.setdefault(r["run"], []).append(r["sizes"][f"{h}x{w}"]["miou"])
        finally:
            evaluate._trained_model = build
    print(f"whole {h}x{w} frames, {args.split} split, mIoU %; logit scale x{factor:.3f} = "
          f"log({(h // args.patch) * (w // args.patch)}) / log({args.train_tokens})")
    print("| run | as trained | log-length scaled | change |\n|---|---:|---:|---:|")
    for run, (plain, log_scaled) in rows.items():
        print(f"| {run} | {plain:.2f} | {log_scaled:.2f} | {log_scaled - plain:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
