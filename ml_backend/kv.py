"""The small shared store behind jobs, progress and the prediction cache: Redis or process memory.

With `REDIS_URL` every process (gunicorn workers, rq workers on other hosts, the CLI) sees
the same coalescing markers, leases, progress records and cached predictions. Without it,
`MemoryKV` gives the same semantics inside one process (the embedded default).

Values are strings; callers encode JSON themselves. Only the handful of operations the
callers need exist, each atomic in both implementations.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Iterable


class KV(ABC):
    @abstractmethod
    def get(self, key: str) -> str | None: ...

    @abstractmethod
    def set(self, key: str, value: str, *, ttl_s: float | None = None) -> None: ...

    @abstractmethod
    def set_nx(self, key: str, value: str, *, ttl_s: float | None = None) -> bool:
        """Set only if absent; True if this call set it."""

    @abstractmethod
    def claim(self, key: str, value: str, *, ttl_s: float | None = None) -> str | None:
        """`set_nx` and, when the key was taken, who holds it, in one atomic step (one Redis round
        trip instead of two: a webhook's enqueue runs it): None when this call set the key, else
        the value that holds it."""

    @abstractmethod
    def renew(self, key: str, value: str, *, ttl_s: float) -> bool:
        """Extend the TTL only if the key still holds `value` (a lease its owner keeps alive)."""

    @abstractmethod
    def release(self, key: str, value: str) -> bool:
        """Delete only if the key still holds `value`."""

    @abstractmethod
    def delete(self, *keys: str) -> None: ...

    @abstractmethod
    def sadd(self, key: str, members: Iterable[str]) -> None: ...

    @abstractmethod
    def smembers(self, key: str) -> set[str]: ...

    @abstractmethod
    def sadd_count(self, key: str, members: Iterable[str]) -> int:
        """`sadd`, then the set's size, in one round trip; counting needs no copy of the members
        (an event set holds up to thousands of them)."""

    @abstractmethod
    def move_set(self, source: str, destination: str) -> set[str]:
        """destination ∪= source; delete source; return destination's members. Atomic."""

    @abstractmethod
    def hset(self, key: str, mapping: dict[str, str], *, ttl_s: float | None = None) -> None: ...

    @abstractmethod
    def hget_many(self, key: str, fields: Iterable[str]) -> dict[str, str]:
        """The fields that exist, as {field: value}."""

    @abstractmethod
    def hgetall(self, key: str) -> dict[str, str]: ...

    @abstractmethod
    def hincr(self, key: str, field: str, amount: int = 1) -> int:
        """Add `amount` to a hash field atomically (a counter every process shares); the new value."""


class MemoryKV(KV):
    """One process's store; expired keys vanish on access."""

    def __init__(self) -> None:
        self._data: dict[str, object] = {}
        self._expires: dict[str, float] = {}
        self._lock = threading.RLock()

    def _live(self, key: str):
        deadline = self._expires.get(key)
        if deadline is not None and time.monotonic() >= deadline:
            self._data.pop(key, None)
            self._expires.pop(key, None)
        return self._data.get(key)

    def _expire(self, key: str, ttl_s: float | None) -> None:
        if ttl_s is None:
            self._expires.pop(key, None)
        else:
            self._expires[key] = time.monotonic() + ttl_s

    def get(self, key):
        with self._lock:
            value = self._live(key)
            return value if isinstance(value, str) else None

    def set(self, key, value, *, ttl_s=None):
        with self._lock:
            self._data[key] = value
            self._expire(key, ttl_s)

    def set_nx(self, key, value, *, ttl_s=None):
        with self._lock:
            if self._live(key) is not None:
                return False
            self.set(key, value, ttl_s=ttl_s)
            return True

    def claim(self, key, value, *, ttl_s=None):
        with self._lock:
            held = self._live(key)
            if held is not None:
                return held if isinstance(held, str) else ""
            self.set(key, value, ttl_s=ttl_s)
            return None

    def renew(self, key, value, *, ttl_s):
        with self._lock:
            if self._live(key) != value:
                return False
            self._expire(key, ttl_s)
            return True

    def release(self, key, value):
        with self._lock:
            if self._live(key) != value:
                return False
            self.delete(key)
            return True

    def delete(self, *keys):
        with self._lock:
            for key in keys:
                self._data.pop(key, None)
                self._expires.pop(key, None)

    def sadd(self, key, members):
        with self._lock:
            current = self._live(key)
            values = set(current) if isinstance(current, set) else set()
            values.update(members)
            if values:
                self._data[key] = values

    def smembers(self, key):
        with self._lock:
            value = self._live(key)
            return set(value) if isinstance(value, set) else set()

    def sadd_count(self, key, members):
        with self._lock:
            self.sadd(key, members)
            value = self._live(key)
            return len(value) if isinstance(value, set) else 0

    def move_set(self, source, destination):
        with self._lock:
            merged = self.smembers(destination) | self.smembers(source)
            self.delete(source)
            if merged:
                self._data[destination] = set(merged)
            return merged

    def hset(self, key, mapping, *, ttl_s=None):
        with self._lock:
            current = self._live(key)
            values = dict(current) if isinstance(current, dict) else {}
            values.update(mapping)
            self._data[key] = values
            if ttl_s is not None:
                self._expire(key, ttl_s)

    def hget_many(self, key, fields):
        with self._lock:
            value = self._live(key)
            if not isinstance(value, dict):
                return {}
            return {field: value[field] for field in fields if field in value}

    def hgetall(self, key):
        with self._lock:
            value = self._live(key)
            return dict(value) if isinstance(value, dict) else {}

    def hincr(self, key, field, amount=1):
        with self._lock:
            current = self._live(key)
            values = dict(current) if isinstance(current, dict) else {}
            values[field] = str(int(values.get(field, 0)) + amount)
            self._data[key] = values
            return int(values[field])


_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisKV(KV):
    """The shared store: several web processes and rq workers coordinate through it."""

    def __init__(self, client) -> None:
        self.client = client  # a redis.Redis with decode_responses=True
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, *, connect_timeout_s: float | None = None,
                 socket_timeout_s: float | None = None) -> "RedisKV":
        """With timeouts (the web process): a call to a Redis that is down fails within them,
        retried once at once (a pooled connection broken by a Redis restart reconnects), never
        with redis-py's default backoff of seconds: a webhook must answer inside 1 s."""
        import redis

        if connect_timeout_s is None and socket_timeout_s is None:
            return cls(redis.Redis.from_url(url, decode_responses=True))
        return cls(redis.Redis.from_url(url, decode_responses=True, **redis_timeouts(connect_timeout_s, socket_timeout_s)))

    @staticmethod
    def _ms(ttl_s: float | None) -> int | None:
        return None if ttl_s is None else max(1, int(ttl_s * 1000))

    def get(self, key):
        return self.client.get(key)

    def set(self, key, value, *, ttl_s=None):
        self.client.set(key, value, px=self._ms(ttl_s))

    def set_nx(self, key, value, *, ttl_s=None):
        return bool(self.client.set(key, value, nx=True, px=self._ms(ttl_s)))

    def claim(self, key, value, *, ttl_s=None):
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(key, value, nx=True, px=self._ms(ttl_s))
            pipe.get(key)
            claimed, held = pipe.execute()
        return None if claimed else held

    def renew(self, key, value, *, ttl_s):
        return bool(self._renew(keys=[key], args=[value, self._ms(ttl_s)]))

    def release(self, key, value):
        return bool(self._release(keys=[key], args=[value]))

    def delete(self, *keys):
        if keys:
            self.client.delete(*keys)

    def sadd(self, key, members):
        members = list(members)
        if members:
            self.client.sadd(key, *members)

    def smembers(self, key):
        return set(self.client.smembers(key))

    def sadd_count(self, key, members):
        members = list(members)
        # No MULTI: the count is a snapshot either way (other webhooks add events concurrently).
        with self.client.pipeline(transaction=False) as pipe:
            if members:
                pipe.sadd(key, *members)
            pipe.scard(key)
            return int(pipe.execute()[-1])

    def move_set(self, source, destination):
        with self.client.pipeline(transaction=True) as pipe:
            pipe.sunionstore(destination, [destination, source])
            pipe.delete(source)
            pipe.smembers(destination)
            return set(pipe.execute()[2])

    def hset(self, key, mapping, *, ttl_s=None):
        if not mapping:
            return
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            if ttl_s is not None:
                pipe.pexpire(key, self._ms(ttl_s))
            pipe.execute()

    def hget_many(self, key, fields):
        fields = list(fields)
        if not fields:
            return {}
        values = self.client.hmget(key, fields)
        return {field: value for field, value in zip(fields, values) if value is not None}

    def hgetall(self, key):
        return dict(self.client.hgetall(key))

    def hincr(self, key, field, amount=1):
        return int(self.client.hincrby(key, field, amount))


def redis_timeouts(connect_timeout_s: float | None, socket_timeout_s: float | None) -> dict:
    """redis-py connection options: these timeouts, one immediate retry on a connection error.

    A timeout is not retried: a Redis that accepts connections and never answers would otherwise
    cost two socket timeouts per call (1 s with the defaults, all of a webhook's time)."""
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    return {"socket_connect_timeout": connect_timeout_s, "socket_timeout": socket_timeout_s,
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "retry_on_timeout": False}


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the shared store (Redis) cannot be reached now (refused, timed out, reset):
    the caller keeps the work for a later reconciliation instead of failing the request."""
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError))


def kv_from_settings(settings) -> KV:
    """Redis when REDIS_URL is set (with the short timeouts of REDIS_*_TIMEOUT_S), else a new in-process store."""
    if settings.redis_url:
        return RedisKV.from_url(settings.redis_url, connect_timeout_s=settings.redis_connect_timeout_s,
                                socket_timeout_s=settings.redis_socket_timeout_s)
    return MemoryKV()
