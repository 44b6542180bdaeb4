"""Early writeback: start flushing staged bytes to disk while the download goes on.

syncd fsyncs every file before it becomes visible. Left alone, the kernel keeps a large
download as dirty pages and the final fsync then waits for all of it at disk speed. Asking
for asynchronous writeback of each range right after writing it (Linux `sync_file_range`
with SYNC_FILE_RANGE_WRITE) overlaps the disk with the network, so the fsync finds little
left to do. Python does not expose the call; elsewhere this is a no-op and fsync does it all.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Callable[[int, int, int], None]:
    if not sys.platform.startswith("linux"):
        return lambda fd, offset, length: None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        if length > 0:
            call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # advisory: errors are ignored
    return start


start_writeback = _load()
