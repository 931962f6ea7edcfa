"""glibc malloc tuning for the servers (`mailstack serve`), applied once at start.

Message bodies cross the process in buffers of 0.1-1 MiB (protobuf messages for gRPC, blob reads).
With glibc's defaults each such buffer above the mmap threshold is mapped and unmapped, and a free at
the top of the heap is trimmed back to the kernel: every new buffer then page-faults its memory in
again. upb (protobuf) serialised a 1 MiB FetchBodiesResponse in ~1.8 ms that way and in ~0.2 ms with
the heap kept (bench: `bench/pop3_load.py`). Keeping up to TRIM_KEEP bytes of free heap is the
price, well under what one busy process uses anyway.

An operator who set glibc's own knobs (MALLOC_*_ or GLIBC_TUNABLES) keeps them; on a C library
other than glibc (musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("mailstack.allocator")

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024  # buffers below this come from the heap (a gRPC message is <= ~1 MiB)
TRIM_KEEP = 32 * 1024 * 1024  # free heap kept at the top instead of being returned at once
_OPERATOR_KNOBS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds; True when applied."""
    if any(name in os.environ for name in _OPERATOR_KNOBS):
        log.debug("malloc: operator settings in the environment are kept")
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_KEEP))
    log.debug("malloc: mmap threshold %d, trim threshold %d: %s", MMAP_THRESHOLD, TRIM_KEEP, applied)
    return applied
