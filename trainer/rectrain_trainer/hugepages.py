"""Transparent huge pages for the big CPU tensors: the embedding tables and their optimizer state.

A step touches thousands of random rows of a table of hundreds of MB; with 4 KiB pages nearly
every row is a TLB miss as well as a cache miss. Asking the kernel for 2 MiB pages on those
tensors (madvise MADV_HUGEPAGE, before their pages are first touched) makes the lookups and the
sparse updates about 1.2-2x faster on CPU. Kernels whose THP mode is `madvise` (the common
default) give huge pages only to memory that asks; PyTorch's own switch for this,
THP_MEM_ALLOC_ENABLE=1, applies to every allocation and must be set before the process's first
one, so the trainer asks for its tables itself.
"""

from __future__ import annotations

import ctypes
import sys

import torch

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_libc = None


def advise_huge_pages(tensor: torch.Tensor) -> bool:
    """Ask for huge pages on the whole 2 MiB pages inside a CPU tensor's memory (Linux only). Call
    it on a fresh torch.empty, before anything writes the tensor: pages already touched keep their
    size. Returns whether the kernel took the advice; never raises."""
    global _libc
    if tensor.device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    begin = tensor.data_ptr()
    start = (begin + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
    end = (begin + tensor.untyped_storage().nbytes()) & ~(HUGE_PAGE - 1)
    if end <= start:
        return False
    try:
        _libc = _libc or ctypes.CDLL(None, use_errno=True)
        return _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_HUGEPAGE) == 0
    except (OSError, AttributeError):
        return False


def empty_on_huge_pages(*shape: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.empty(shape), on huge pages when it is a CPU tensor (see advise_huge_pages)."""
    out = torch.empty(*shape, device=device, dtype=dtype)
    advise_huge_pages(out)
    return out
