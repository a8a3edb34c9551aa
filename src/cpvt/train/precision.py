"""Which floating-point precision a forward pass runs in: the one rule every loop (training, evaluation,
segmentation) shares."""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """bf16 where the device computes it natively (``auto``), or as asked.

    On a CPU without bf16 instructions (AVX2 only) bf16 is emulated: training
    ``deit_micro`` at 64 px ran at 38 img/s in bf16 against 262 img/s in fp32 on
    one thread of such a machine, so ``auto`` keeps fp32 there.
    """
    if amp == "off":
        return None
    if amp not in ("auto", "bf16"):
        raise ValueError(f"amp must be auto, bf16 or off, got {amp!r}")
    if amp == "auto" and device.type == "cpu" and not cpu_has_native_bf16():
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16
