"""Ids: time-ordered uuid7 for predictions, uuid4 for requests; never repeated across draws, threads or a fork."""

from __future__ import annotations

import os
import threading
import time
import uuid
import warnings

import pytest

from titanic_web import ids
from titanic_web.ids import new_ids, new_request_id, random_bytes


def assert_uuid_hex(values: list[str], version: int) -> None:
    for text in values:
        value = uuid.UUID(hex=text)
        assert value.hex == text  # 32 lowercase hex digits, nothing else
        assert value.version == version and value.variant == uuid.RFC_4122


@pytest.mark.parametrize("count", [0, 1, 2, ids.MANY - 1, ids.MANY, 1000])
def test_each_draw_is_count_uuid7s_of_this_millisecond(count: int) -> None:
    before = time.time_ns() // 1_000_000
    drawn = new_ids(count)
    after = time.time_ns() // 1_000_000
    assert len(drawn) == count == len(set(drawn))
    assert_uuid_hex(drawn, 7)
    assert all(before <= uuid.UUID(hex=text).int >> 80 <= after for text in drawn)


def test_many_new_ids_are_uuid7_hex_of_now() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_ids(100_000)
    after = time.time_ns() // 1_000_000

    assert len(ids) == 100_000 == len(set(ids))
    for text in ids:
        assert len(text) == 32
        value = uuid.UUID(hex=text)
        assert value.hex == text  # lowercase hex, nothing else
        assert value.version == 7 and value.variant == uuid.RFC_4122
        assert before <= value.int >> 80 <= after  # the first 48 bits: the time in milliseconds
    assert new_ids(0) == []
    assert set(new_ids(1000)).isdisjoint(ids)


def test_prediction_ids_sort_by_the_time_they_were_made() -> None:
    """What keeps inserts at the end of the uuid indexes: a later millisecond, a larger id."""
    first = new_ids(3)
    time.sleep(0.002)
    second = new_ids(ids.MANY)
    time.sleep(0.002)
    third = new_ids(1)
    assert max(first) < min(second) and max(second) < min(third)
    assert len({text[:12] for text in second}) == 1  # one call, one millisecond


def test_request_ids_are_uuid4() -> None:
    drawn = [new_request_id() for _ in range(500)]
    assert len(set(drawn)) == 500
    assert_uuid_hex(drawn, 4)


def test_small_draws_never_repeat_across_refills() -> None:
    # 3,000 one-id draws use the pool's 4,096 bytes many times over.
    drawn = [new_ids(1)[0] for _ in range(3000)] + new_ids(5) + new_ids(ids.MANY)
    requests = [new_request_id() for _ in range(3000)]
    assert len(set(drawn)) == len(drawn)
    assert len(set(requests)) == len(requests)
    assert_uuid_hex(drawn, 7)


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
        drawn.append([new_request_id() for _ in range(300)] + [new_ids(1)[0] for _ in range(300)])

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [text for part in drawn for text in part]
    assert len(everything) == 2400 == len(set(everything))


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    """gunicorn forks its workers: a pool filled before the fork must not serve both sides."""
    new_request_id()  # the pool now holds bytes both processes would see
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of fork() in a process with threads; this child only writes
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: send its next ids, then leave at once
        try:
            os.write(write, "".join(new_request_id() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parent = "".join(new_request_id() for _ in range(10))
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {parent[i : i + 32] for i in range(0, len(parent), 32)}
    assert len(child_ids) == 10 and child_ids.isdisjoint(parent_ids)
