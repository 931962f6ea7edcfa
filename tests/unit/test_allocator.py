"""glibc malloc tuning at server start (services/common/allocator.py)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest
from mailstack.services.common import allocator


def _is_glibc() -> bool:
    return bool(os.confstr("CS_GNU_LIBC_VERSION")) if "CS_GNU_LIBC_VERSION" in os.confstr_names else False


def test_operator_settings_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert allocator.tune_allocator() is False


_MAPPED_BY_A_MEGABYTE = """
import ctypes, ctypes.util, sys
from mailstack.services.common.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
data = bytes(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not _is_glibc(), reason="mallopt is glibc's")
@pytest.mark.parametrize(("mode", "mapped"), [("default", "1"), ("tuned", "0")])
def test_a_megabyte_comes_from_the_heap_once_tuned(mode: str, mapped: str) -> None:
    # mallinfo2().hblks counts mmapped blocks: glibc maps a 1 MiB buffer by default (and unmaps it
    # when freed, so the next one page-faults again); tuned, it comes from the heap.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    run = [sys.executable, "-c", _MAPPED_BY_A_MEGABYTE, mode]
    out = subprocess.run(run, capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == mapped, out.stderr


def test_libc_is_found_here() -> None:
    # the tuning silently does nothing without a C library to call; on this platform there must be one
    assert ctypes.util.find_library("c")
