"""Values parsed from files, reused while the file is unchanged: one `stat` instead of a read and a parse.

Why: every annotation webhook asks how many annotations the serving SLM version learned from (its
manifest's counts); Label Studio gives a webhook 1 s, and at 50 senders the server is
throughput-bound, so reading and parsing the same manifest per event is latency for everyone.

When is a cached value still the file's? The cache keys each value by the file's signature
(device, inode, size, modification time in ns). Files here are replaced atomically (a new file
renamed over the old one: a new inode), but a freed inode can be handed out again and a file
system's clock has a granularity (1 ms to 2 s), so a rewrite in the same tick could repeat a
signature. As git does for its index ("racily clean" entries), a value is kept only when its
file was already `TRUST_AFTER_S` old when it was read: a later rewrite then gets a later
modification time, so a new signature. Younger files are read and parsed every time.

Values are shared between callers: cache only immutable ones (numbers, strings, tuples).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

TRUST_AFTER_S = 2.0  # s: above the coarsest modification-time granularity of common file systems (1 s)
MAX_ENTRIES = 1024  # files remembered per cache (least recently used dropped first)


@dataclass(frozen=True)
class FileSignature:
    """What changes whenever the file at a path is replaced or rewritten (see the module's rule)."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> "FileSignature":
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class ParsedFileCache(Generic[T]):
    """`get(path)`: `parse(path)`'s value, parsed again only when the file changed.

    Errors of `stat` (e.g. FileNotFoundError) and of `parse` reach the caller and are not cached."""

    def __init__(
        self,
        parse: Callable[[Path], T],
        *,
        trust_after_s: float = TRUST_AFTER_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._parse = parse
        self._trust_after_s = trust_after_s
        self._max_entries = max_entries
        self._clock = clock  # wall clock: compared with modification times
        self._entries: OrderedDict[str, tuple[FileSignature, T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | os.PathLike[str]) -> T:
        path = os.fspath(path)  # a str key: hashing and comparing a Path costs more than the stat
        before = os.stat(path)
        signature = FileSignature.of(before)
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None and entry[0] == signature:
                self._entries.move_to_end(path)
                return entry[1]
        value = self._parse(Path(path))
        old_enough = self._clock() - before.st_mtime >= self._trust_after_s
        if old_enough and FileSignature.of(os.stat(path)) == signature:  # the file parsed is the one stat saw
            self._remember(path, signature, value)
        return value

    def _remember(self, path: str, signature: FileSignature, value: T) -> None:
        with self._lock:
            self._entries[path] = (signature, value)
            self._entries.move_to_end(path)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
