"""Stand-ins for the outside world that tests cannot break for real."""

from __future__ import annotations

import errno
import os
from typing import Any


class FullDisk:
    """Stands in for the os module inside titanic_web.spool: writes fail with ENOSPC, and so
    does giving a new segment its blocks ahead (``posix_fallocate``).

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
        return self.pwrite(fd, data, None)

    def pwrite(self, fd: int, data: bytes, offset: int | None) -> int:
        def store(part: bytes) -> int:
            return os.write(fd, part) if offset is None else os.pwrite(fd, part, offset)

        if not self.full:
            return store(data)
        self.calls += 1
        if self.short_first and self.calls == 1:
            return store(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def posix_fallocate(self, fd: int, offset: int, length: int) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.posix_fallocate(fd, offset, length)
