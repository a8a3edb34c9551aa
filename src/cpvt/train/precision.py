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


# ``amp="auto"`` on a CPU: bf16 only for models at least this wide (token width, the last stage's for a pyramid).
# Measured (bf16 / fp32 throughput, one thread, interleaved in one process, benchmarks/amp_choice.py):
#   AMD EPYC with AVX512-BF16, no AMX: width 64 (demo step) 0.93x, width 64 at 64 px (Imagenette protocol) 0.67x;
#   width 192 (CPVT-Ti at 224) 1.76x inference, 1.58x training.
#   Xeon with AMX (issue #39): cpvt_micro training 0.61x (117 against 192 img/s); DeiT-Ti 2.42x inference, 1.66x
#   training. Small matmuls do not repay the conversions, on both kinds.
CPU_BF16_MIN_WIDTH = 192


def model_width(model: torch.nn.Module | None) -> int | None:
    """A model's token width (``embed_dim``: a segmentation model's is its backbone's; through a DDP or
    compile wrapper), or None if it has none."""
    for m in (model, getattr(model, "module", None)):
        width = getattr(m, "embed_dim", None)
        if isinstance(width, int):
            return width
    return None


def cpu_description() -> tuple[str, list[str]]:
    """This CPU's model name and its bf16 instruction sets (of avx512_bf16, amx_bf16), from /proc/cpuinfo
    (``("unknown", [])`` where there is none): what benchmarks print beside their tables."""
    name, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, [f for f in ("avx512_bf16", "amx_bf16") if f in flags]


def autocast_dtype(device: torch.device, amp: str, model: torch.nn.Module | None = None) -> torch.dtype | None:
    """bf16 where it is faster (``auto``), or as asked.

    ``auto`` on a CPU: bf16 only where the CPU computes it natively and the model is at least
    :data:`CPU_BF16_MIN_WIDTH` wide (a model given without a width counts as wide). On a CPU without
    bf16 instructions (AVX2 only) bf16 is emulated: training ``deit_micro`` at 64 px ran at 38 img/s in
    bf16 against 262 img/s in fp32 on one thread of such a machine. On a CUDA device: bf16 where supported.
    """
    if amp == "off":
        return None
    if amp not in ("auto", "bf16"):
        raise ValueError(f"amp must be auto, bf16 or off, got {amp!r}")
    if amp == "auto" and device.type == "cpu":
        width = model_width(model)
        if not cpu_has_native_bf16() or (width is not None and width < CPU_BF16_MIN_WIDTH):
            return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16
