"""Stand-ins for the outside world that tests cannot break for real."""

from __future__ import annotations

import errno
import os
from typing import Any


class FullDisk:
    """Stands in for the os module inside titanic_web.spool: writes fail with ENOSPC.

    With short_first, the first write stores half its bytes (the last free blocks)
    before the disk is full, as Linux does.
    """

    def __init__(self, *, short_first: bool = False) -> None:
        self.full = True
        self.short_first = short_first
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if not self.full:
            return os.write(fd, data)
        self.calls += 1
        if self.short_first and self.calls == 1:
            return os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
