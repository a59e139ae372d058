"""Ids in hex: time-ordered uuids for predictions (version 7), random ones for requests (version 4).

A prediction's uuid is the primary key of both tables. Random keys (version 4) land
anywhere in those indexes, so every stored row dirties a page of its own and a
database's insert cost grows with its size: on a 100,000-row SQLite table the
recorder's writer spent 32 us of CPU a row (bench/bench_writer.py). A version 7
uuid (RFC 9562) starts with the time in milliseconds, so new rows go to the end of
the indexes: 8 us a row on the same table. The other 74 bits are random, and the
ids also sort by the time they were made.

Every request needs ids, and each ``os.urandom`` is a system call that lets go of the
interpreter lock: while the recorder's writer thread waits for the lock, every such
call hands it over and the request waits to get it back. So small draws come from a
per-thread pool filled a few kilobytes at a time, refilled after a fork so that no
two processes ever hand out the same bytes.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

#: Bytes read from the system at a time for small draws.
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
    """count new prediction ids: uuid version 7 in hex (the time in ms, then 74 random bits).

    All ids of one call share their millisecond; the RFC 4122 variant, as ``uuid.UUID`` reads it.
    """
    stamp = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    return _hex_uuids(count, version=0x70, prefix=stamp)


def new_request_id() -> str:
    """A new request id: uuid version 4 in hex, as ``uuid.uuid4().hex``."""
    return _hex_uuids(1, version=0x40, prefix=b"")[0]


def _hex_uuids(count: int, *, version: int, prefix: bytes) -> list[str]:
    """count uuids in hex: ``prefix`` (the version 7 time, or nothing), random bytes, then the
    version nibble in byte 6 and the variant bits in byte 8."""
    size = 16 - len(prefix)
    if count >= MANY:
        data = np.empty((count, 16), dtype=np.uint8)
        data[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
        data[:, len(prefix) :] = np.frombuffer(os.urandom(size * count), dtype=np.uint8).reshape(count, size)
        data[:, 6] = (data[:, 6] & 0x0F) | version
        data[:, 8] = (data[:, 8] & 0x3F) | 0x80
        text = data.tobytes().hex()
    else:
        randomness = random_bytes(size * count)
        raw = bytearray(b"".join(prefix + randomness[i : i + size] for i in range(0, size * count, size)))
        for start in range(0, 16 * count, 16):
            raw[start + 6] = (raw[start + 6] & 0x0F) | version
            raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80
        text = raw.hex()
    return [text[start : start + 32] for start in range(0, 32 * count, 32)]
