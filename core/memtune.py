"""Keep memory the process frees for its next allocations (glibc's malloc).

A process that allocates and frees the same few-MiB arrays block after block (``still dedup``:
lines, shingle sets, signatures) gets them, by default, as fresh pages from the kernel each time:
above 128 KiB glibc maps large arrays and unmaps them on free, and trims the top of its heap
on free. Fresh pages are zeroed by the kernel and fault in one by one: measured, 8-11% of the
CPU time of ``still dedup`` went there. With arrays up to 32 MiB kept in the heap and up to
256 MiB of free heap kept, the same pages are used again. The peak memory stays what the
process holds at once (plus what it freed, up to that bound).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above (a fork inherits it); False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 256 << 20), (_M_TOP_PAD, 16 << 20))
    return all(mallopt(option, value) == 1 for option, value in settings)
