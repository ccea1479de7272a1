"""Keep freed host memory in the process, so that every CPU request does not page-fault its activations afresh.

glibc's malloc serves large blocks (above its mmap threshold, at most 32 MiB) with a fresh mmap and hands them
back to the kernel on free, and trims the top of the heap once 128 KiB of it is free. A CPU prefill over ~3,000
positions allocates activations of tens to hundreds of MB per layer, so each request touches every page of them
anew: a page fault per 4 KiB. `keep_freed_host_memory` turns both off (`mallopt`: no mmap'd chunks, no trim
below 2 GiB), so freed blocks are reused by the next request, as ONNX Runtime's own CPU arena does for its
activations. The cost is that the process holds its peak heap between requests, which is why `low_memory` runs
(memory-bound devices) leave glibc's defaults alone, as does any process started with TRIO_EDGE_KEEP_HOST_MEMORY=0.

Measured (wide llava-next-7b shape, torch runtime, one process each, 4 requests after a load; docs/design.md, "Host
memory on CPU"): unpruned TTFT 3.3-3.9 s with 60-216k page faults per request before, 2.7-2.8 s with 0-3.5k
after; TRIO's first select stage 275-334 ms before, 179-220 ms after.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int: the largest it accepts
OPT_OUT_ENV = "TRIO_EDGE_KEEP_HOST_MEMORY"  # "0": leave glibc's defaults alone in this process

_kept: bool | None = None  # None: not tried yet in this process


def keep_freed_host_memory() -> bool:
    """Process-wide: freed blocks stay in the heap for reuse. True when glibc took the settings (now or earlier);
    False where the C library is not glibc or $TRIO_EDGE_KEEP_HOST_MEMORY is 0 (nothing changed). Tried once per
    process."""
    global _kept
    if _kept is None:
        _kept = False
        if keeping_allowed():
            libc = _glibc()
            _kept = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _kept


def keeping_allowed() -> bool:
    """Whether keep_freed_host_memory would act here: glibc, and not opted out with $TRIO_EDGE_KEEP_HOST_MEMORY=0."""
    wanted = os.environ.get(OPT_OUT_ENV, "1").strip() != "0"
    return wanted and _glibc() is not None


def release_freed_host_memory() -> bool:
    """Hand the heap's free pages back to the kernel now (glibc's malloc_trim, which also releases free pages in
    the middle of the heap): low-memory runs call it after closing a graph's session, whose freed weights and
    activations glibc would otherwise keep as heap fragments (0.3 GiB after the vision graph of a Qwen3-VL-4B
    int4 export). False where the C library is not glibc (nothing done) or nothing was released."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def _glibc():
    """The C library when it is glibc (mallopt, malloc_trim), else None; looked up once per process (platform's
    libc_ver reads the interpreter's binary)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def host_memory_kept() -> bool:
    """Whether this process keeps freed host memory (keep_freed_host_memory took effect)."""
    return bool(_kept)
