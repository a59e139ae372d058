"""Random ids from the pooled randomness: uuid4 hex, never repeated across draws, threads or a fork."""

from __future__ import annotations

import os
import threading
import uuid
import warnings

import pytest

from titanic_web import ids
from titanic_web.ids import new_ids, random_bytes


def assert_uuid4_hex(values: list[str]) -> None:
    for text in values:
        value = uuid.UUID(hex=text)
        assert value.hex == text  # 32 lowercase hex digits, nothing else
        assert value.version == 4 and value.variant == uuid.RFC_4122


@pytest.mark.parametrize("count", [0, 1, 2, ids.MANY - 1, ids.MANY, 1000])
def test_each_draw_is_count_uuid4s(count: int) -> None:
    drawn = new_ids(count)
    assert len(drawn) == count == len(set(drawn))
    assert_uuid4_hex(drawn)


def test_small_draws_never_repeat_across_refills() -> None:
    # 3,000 one-id draws use the pool's 4,096 bytes (256 ids) about twelve times over.
    drawn = [new_ids(1)[0] for _ in range(3000)] + new_ids(5) + new_ids(ids.MANY)
    assert len(set(drawn)) == len(drawn)
    assert_uuid4_hex(drawn)


def test_the_pool_hands_out_each_byte_once() -> None:
    first = random_bytes(100)
    second = random_bytes(100)
    assert len(first) == len(second) == 100
    assert first != second
    big = random_bytes(ids.POOL_BYTES * 2)  # more than a pool: read whole
    assert len(big) == ids.POOL_BYTES * 2


def test_threads_draw_apart() -> None:
    drawn: list[list[str]] = []

    def draw() -> None:
        drawn.append([new_ids(1)[0] for _ in range(300)])

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [text for part in drawn for text in part]
    assert len(everything) == 1200 == len(set(everything))


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    """gunicorn forks its workers: a pool filled before the fork must not serve both sides."""
    new_ids(1)  # the pool now holds bytes both processes would see
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of fork() in a process with threads; this child only writes
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: send its next ids, then leave at once
        try:
            os.write(write, "".join(new_ids(1)[0] for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parent = "".join(new_ids(1)[0] for _ in range(10))
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {parent[i : i + 32] for i in range(0, len(parent), 32)}
    assert len(child_ids) == 10 and child_ids.isdisjoint(parent_ids)
