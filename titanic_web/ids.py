"""Random ids: uuid4 in hex, for predictions and requests, drawn from a pool of the system's randomness.

Every request needs two (its request id and its prediction's), and each ``os.urandom``
is a system call that lets go of the interpreter lock: while the recorder's writer
thread waits for the lock, every such call hands it over and the request waits to get
it back. So small draws come from a per-thread pool filled a few kilobytes at a time.
The pool is refilled after a fork, so no two processes ever hand out the same bytes.
"""

from __future__ import annotations

import os
import threading

import numpy as np

#: Bytes read from the system at a time for small draws (256 ids).
POOL_BYTES = 4096
#: Draws of this many ids or more read the system at once and are marked with numpy.
MANY = 16


class _Pool(threading.local):
    data = b""
    offset = 0
    pid = 0


_POOL = _Pool()


def random_bytes(count: int) -> bytes:
    """count bytes from the system's randomness (``os.urandom``), read ahead in POOL_BYTES."""
    pool = _POOL
    pid = os.getpid()
    if pool.pid != pid or pool.offset + count > len(pool.data):
        pool.data = os.urandom(max(POOL_BYTES, count))
        pool.offset = 0
        pool.pid = pid
    start = pool.offset
    pool.offset = start + count
    return pool.data[start : start + count]


def new_ids(count: int) -> list[str]:
    """``uuid.uuid4().hex`` for count new ids: version 4, the RFC 4122 variant, 122 random bits."""
    if count >= MANY:
        data = np.frombuffer(os.urandom(16 * count), dtype=np.uint8).reshape(count, 16).copy()
        data[:, 6] = (data[:, 6] & 0x0F) | 0x40
        data[:, 8] = (data[:, 8] & 0x3F) | 0x80
        text = data.tobytes().hex()
    else:
        raw = bytearray(random_bytes(16 * count))
        for start in range(0, 16 * count, 16):
            raw[start + 6] = (raw[start + 6] & 0x0F) | 0x40  # version 4
            raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80  # the RFC 4122 variant
        text = raw.hex()
    return [text[start : start + 32] for start in range(0, 32 * count, 32)]
