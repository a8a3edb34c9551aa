"""Model facts: parameter counts (total and of the position encoding), FLOPs, token grid.

FLOPs come from PyTorch's own counter (:class:`torch.utils.flop_counter.FlopCounterMode`),
with one addition: on the CPU, ``scaled_dot_product_attention`` dispatches to a
fused kernel (``_scaled_dot_product_flash_attention_for_cpu``) that the counter
has no formula for, so the two attention products ``Q K^T`` and ``A V`` would
be missing (2.15 instead of 2.51 GFLOPs for DeiT-tiny at 224). We register that
formula. One multiply-add counts as two FLOPs, as PyTorch counts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _sdpa_forward_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(Q K^T) V for shapes (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, Dv)."""
    b, h, lq, d = query
    lk, dv = key[-2], value[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Backward of both products: two matmuls each (gradients of both operands)."""
    return 2 * _sdpa_forward_flops(query, key, value)


SDPA_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
}


def count_flops(model: nn.Module, img_size: int | tuple[int, int], in_chans: int | None = None) -> int:
    """FLOPs of one forward pass on a single image of ``img_size``, attention included."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    in_chans = in_chans or getattr(model, "in_chans", 3)
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=SDPA_FLOP_FORMULAS) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> dict[str, int]:
    """Total, trainable and position-encoding parameter counts."""
    encodings = model.position_encodings() if hasattr(model, "position_encodings") else []
    pos = sum(p.numel() for enc in encodings for p in enc.parameters())
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "pos_params": pos,
    }


def model_info(model: nn.Module, img_size: int | tuple[int, int] | None = None, flops: bool = True) -> dict[str, Any]:
    """Everything ``cpvt info`` prints, as a dict."""
    img_size = img_size or model.img_size
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    grid = model.grid_for(size)
    out: dict[str, Any] = {
        "model": getattr(model, "model_name", type(model).__name__),
        "pos": model.model_args.get("pos") if hasattr(model, "model_args") else None,
        "img_size": list(size),
        "patch_size": model.patch_size,
        "grid": list(grid),
        "tokens": grid[0] * grid[1] + model.num_prefix,
        **count_params(model),
    }
    if flops:
        f = count_flops(model, size)
        out.update(flops=f, gflops=round(f / 1e9, 4), gmacs=round(f / 2e9, 4))
    return out
