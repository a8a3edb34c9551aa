"""Keep freed activation memory in the process (glibc), so large tensors do not fault their pages in anew.

glibc's ``malloc`` serves blocks above its mmap threshold with a fresh ``mmap``
and gives them back with ``munmap`` on free, and it trims the top of the heap
back to the operating system once enough is free there. A training or
evaluation step allocates and frees the same large activations (tens of MiB)
every step, so on the CPU each step pays the kernel to zero and map those pages
again. In an idle profile of ``cpvt_ti`` fp32 inference at 224 px
(``benchmarks/profile_step.py``) that cost lands on the operators that write large
fresh outputs: GELU took 10.3 % of the time and ``addmm``'s bias copy 6.1 %,
against 7.2 % and 4.1 % with this setting (1.84 s against 1.73 s in all).
Raising both thresholds keeps the freed blocks for the next step. The numbers
a model computes do not change, only where its tensors live
(``benchmarks/allocator.py`` measures the speed; tests check the outputs are
bit-identical).

This is the same setting as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
in the environment (see ``mallopt(3)``), made from inside the process so every
``cpvt`` command gets it. Other allocators (jemalloc, tcmalloc through
``LD_PRELOAD``) and other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt(3) parameter numbers (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # the largest mmap threshold some glibc versions accept on 64-bit

_done: bool | None = None


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Serve blocks up to ``threshold`` bytes from the heap and keep up to ``threshold`` free there.

    Sets glibc's mmap threshold (to 32 MiB where the C library refuses more) and
    its trim threshold.

    Returns whether the setting was made: False on a system without glibc, when
    the environment already sets either threshold (the user's choice wins) or
    when ``CPVT_MALLOC=default`` asks to leave malloc alone. Calling it again
    does nothing.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("CPVT_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(threshold), 2**31 - 1)
    mapped = mallopt(M_MMAP_THRESHOLD, value) or mallopt(M_MMAP_THRESHOLD, min(value, MMAP_THRESHOLD_MAX))
    _done = bool(mapped) and bool(mallopt(M_TRIM_THRESHOLD, value))
    return _done
