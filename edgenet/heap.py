"""Giving the C heap's freed pages back to the operating system after the models load.

Why: onnxruntime optimises a graph when its session is built (every start on a GPU provider,
and on the CPU when the optimised graph is not cached yet: `graph_cache.optimized_model_path`),
and the optimisers replace initializers with new copies (fused, reordered). The old copies
are freed, but glibc keeps freed blocks of up to 32 MB in its heaps for reuse, so the
process's resident memory stays one model's weights higher for the whole run (measured on the
full-size pack, CPU provider, uncached: detector session +1117 MB resident against 560 MB of
weights, +550 MB after `malloc_trim(0)`; classifier +476 -> +235 MB; benchmarks/NOTES.md
entry 16). One `malloc_trim(0)` after the sessions exist returns those pages (10-30 ms);
it changes no computation. Decode workers call it after each job too: each would otherwise
stay at its largest image's footprint. A no-op where the C library is not glibc (macOS,
Windows, musl); `EDGENET_TRIM=0` turns it off (to measure it: `gpu_device.py probe`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The symbols already loaded into this process: no library search (find_library
        # would run ldconfig in every decode worker).
        trim = ctypes.CDLL(None).malloc_trim  # glibc only; musl has no such symbol
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_heap() -> bool:
    """Return freed heap pages to the OS where glibc allows it; True when it ran."""
    trim = _malloc_trim()
    if trim is None or os.environ.get("EDGENET_TRIM", "1") == "0":
        return False
    trim(0)
    return True
