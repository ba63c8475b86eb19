"""Process-wide memory behaviour: keep freed blocks for reuse instead of giving them back to the OS.

glibc returns a freed block of more than a few MB to the OS (``munmap``, or trimming the heap top), so the
next array of that size is fresh pages, and every page costs a fault on first touch. A forecast round
makes a handful of such arrays (an (N, P) state, (N, m, width) intermediates): at 8 agents x 160 samples
x width 1024 the faults made the exact forecast's rounds 15-45% slower, and by how much varied from run to
run with glibc's adaptive threshold. ``keep_freed_memory`` fixes both thresholds, so freed blocks stay in
the heap. Peak RSS does not grow (the blocks are reused); RSS simply does not shrink after a peak.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from the heap and go back to it


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks (mallopt); True if it took, False where there is no glibc
    (then nothing changes: only speed is at stake)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * KEEP_BELOW))
