"""glibc's malloc set for a training step: freed memory stays in the process for the next step.

A CPU step allocates and frees the same few-MB tensors every time (activations, gathered rows,
exchange buffers). With glibc's defaults many of them are handed back to the kernel when freed
(an munmap past the mmap threshold, a heap trim past the trim threshold) and paged in again, zeroed,
at the next step. Measured on the 2-rank sharded benchmark (bench/sharding_bench.py, row mode):
2,700 page faults and 8.8 ms of system time per 45 ms step; with the settings below, 33 faults and
3.2 ms, and 1.2x the samples/s (median of 4 interleaved runs each).

The settings: allocations below 32 MiB (glibc's ceiling for this threshold) come from the heap,
freed heap memory is never trimmed, and the heap grows 64 MiB at a time. The cost: a rank's RSS
stays at its high-water mark instead of shrinking between steps (its peak is unchanged). They are
glibc's MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ and MALLOC_TOP_PAD_ environment variables
set from inside the process; a user who sets any of those (or GLIBC_TUNABLES) keeps their own.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("rectrain.host_allocator")

# mallopt() parameters (malloc.h) and the values set
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: -1, _M_TOP_PAD: 64 << 20}  # -1: never trim (man mallopt)
USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def retain_freed_memory() -> bool:
    """Apply SETTINGS to this process's malloc (glibc on Linux only). Returns whether it did: not
    when the user set glibc's own malloc variables, not on another libc; never raises."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_ENV):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc's: another libc's mallopt may take other parameters
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    if not applied:
        log.debug("mallopt refused a setting; malloc keeps glibc's defaults for it")
    return applied
