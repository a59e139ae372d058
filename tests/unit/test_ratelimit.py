"""The rate limiter without Flask: counting per route and client, windows, the storage falling back."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from limits import parse_many
from limits.storage import MemoryStorage

from titanic_web import ratelimit
from titanic_web.config import ConfigError
from titanic_web.ratelimit import LazyMemoryStorage, RateLimited, RateLimiter


def memory_limiter(limit: str) -> RateLimiter:
    return RateLimiter(parse_many(limit), storage_uri="memory://", key_prefix="test")


def test_counts_each_route_and_client_apart() -> None:
    limiter = memory_limiter("2/minute")
    assert [limiter.hit("api.predict", "10.0.0.1") for _ in range(2)] == [None, None]
    refused = limiter.hit("api.predict", "10.0.0.1")
    assert isinstance(refused, RateLimited)
    assert refused.code == 429 and str(refused.limit) == "2 per 1 minute"
    assert 1 <= refused.retry_after <= 60
    assert limiter.hit("api.predict", "10.0.0.2") is None, "another client has its own count"
    assert limiter.hit("web.index", "10.0.0.1") is None, "another route has its own count"


def test_every_limit_of_several_is_checked() -> None:
    limiter = memory_limiter("100/minute;3/hour")
    results = [limiter.hit("api.predict", "c") for _ in range(4)]
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], RateLimited) and str(results[3].limit) == "3 per 1 hour"


def test_memory_storage_starts_no_thread_per_request() -> None:
    """limits' own memory storage starts a timer thread whenever its last one has ended;
    ours drops expired counts as they are read and purges now and then, inline."""
    limiter = memory_limiter("1000/second")
    assert isinstance(limiter._primary.storage, LazyMemoryStorage)
    started: list[Any] = []
    original = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        original(thread)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threading.Thread, "start", counting_start)
        for _ in range(50):
            limiter.hit("api.predict", "c")
            time.sleep(0.002)  # longer than the library's 0.01 s timers, in all
    assert started == []


def test_memory_storage_forgets_clients_that_do_not_come_back() -> None:
    limiter = memory_limiter("5/second")
    storage = limiter._primary.storage
    assert isinstance(storage, LazyMemoryStorage)
    limiter.hit("api.predict", "gone")
    assert len(storage.storage) == 1
    time.sleep(1.05)  # the one-second window has ended
    limiter.hit("api.predict", "new")
    assert len(storage.storage) == 2, "no purge before PURGE_SECONDS"
    storage._next_purge = 0.0  # as if PURGE_SECONDS had passed
    limiter.hit("api.predict", "new")
    assert [key.split("/")[-4] for key in storage.storage] == ["new"]


def test_a_failing_storage_counts_in_memory_then_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = memory_limiter("2/minute")
    broken_calls = 0

    class Broken(MemoryStorage):
        def incr(self, *args: Any, **kwargs: Any) -> int:
            nonlocal broken_calls
            broken_calls += 1
            raise ConnectionError("storage down")

    limiter._primary = type(limiter._primary)(Broken())
    limiter._memory = None
    assert limiter.hit("api.predict", "c") is None  # counted in memory instead
    assert broken_calls == 1
    assert limiter.hit("api.predict", "c") is None
    assert broken_calls == 1, "while the retry time runs, the storage is not asked"
    assert isinstance(limiter.hit("api.predict", "c"), RateLimited), "the fallback keeps the count"
    monkeypatch.setattr(ratelimit, "STORAGE_RETRY_SECONDS", 0.0)
    limiter._storage_down_until = time.monotonic() - 1
    limiter.hit("api.predict", "c")
    assert broken_calls == 2, "after the retry time the storage is tried again"


@pytest.mark.parametrize(
    ("uri", "shown", "reason"),
    [
        ("bogus://user:hunter2@cache:1/0", "bogus://cache:1/0", "ConfigurationError: unknown storage scheme"),
        ("redis:/cache", "redis:/cache", "ValueError: Redis URL must specify one of the following schemes"),
        ("memcached://cache:11211", "memcached://cache:11211", "ConfigurationError: 'pymemcache' prerequisite"),
    ],
)
def test_an_unusable_storage_is_a_config_error_naming_the_variable_never_the_password(
    uri: str, shown: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimiter(parse_many("2/minute"), storage_uri=uri, key_prefix="t")
    message = str(info.value)
    assert message.startswith(f"RATELIMIT_STORAGE_URI cannot be used ({shown}): {reason}"), message
    assert "hunter2" not in message and "user" not in message
