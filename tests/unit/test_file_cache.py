"""The parsed-file cache: a value is reused only while its file is provably the one parsed."""

from __future__ import annotations

import json
import os
import time

import pytest

from ml_backend.file_cache import TRUST_AFTER_S, ParsedFileCache
from ml_backend.model_store import atomic_write_text


def _counting_cache(**options):
    parsed: list[str] = []

    def parse(path):
        parsed.append(path.name)
        return json.loads(path.read_text(encoding="utf-8"))["count"]

    return ParsedFileCache(parse, **options), parsed


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_an_unchanged_old_file_is_parsed_once(tmp_path):
    cache, parsed = _counting_cache()
    path = tmp_path / "manifest.json"
    atomic_write_text(path, json.dumps({"count": 150}))
    _age(path, 3600)
    assert [cache.get(path) for _ in range(5)] == [150] * 5
    assert parsed == ["manifest.json"]


def test_a_replaced_file_is_parsed_again_even_at_the_same_size(tmp_path):
    cache, parsed = _counting_cache()
    path = tmp_path / "manifest.json"
    atomic_write_text(path, json.dumps({"count": 150}))
    _age(path, 3600)
    assert cache.get(path) == 150
    atomic_write_text(path, json.dumps({"count": 151}))  # same size, new file (as every write here is)
    _age(path, 3500)
    assert cache.get(path) == 151
    assert len(parsed) == 2


def test_a_file_younger_than_the_clock_granularity_margin_is_never_trusted(tmp_path):
    """A rewrite in place inside one tick of a coarse clock keeps inode, size and mtime: only the
    age rule tells the two contents apart, so a young file is parsed on every call."""
    cache, parsed = _counting_cache()
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"count": 150}), encoding="utf-8")
    stamp = path.stat().st_mtime_ns
    assert cache.get(path) == 150
    with open(path, "r+", encoding="utf-8") as handle:  # same inode, same size
        handle.write(json.dumps({"count": 151}))
    os.utime(path, ns=(stamp, stamp))  # and the same modification time
    assert cache.get(path) == 151
    assert len(parsed) == 2


def test_a_young_file_is_cached_once_it_is_old_enough(tmp_path):
    now = [time.time()]
    cache, parsed = _counting_cache(clock=lambda: now[0])
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"count": 7}), encoding="utf-8")
    assert cache.get(path) == 7 and cache.get(path) == 7
    now[0] += TRUST_AFTER_S + 1
    assert cache.get(path) == 7 and cache.get(path) == 7
    assert len(parsed) == 3  # twice while young, once when old enough, then from the cache


def test_errors_are_not_cached(tmp_path):
    cache, parsed = _counting_cache()
    path = tmp_path / "manifest.json"
    with pytest.raises(FileNotFoundError):
        cache.get(path)
    path.write_text("not json", encoding="utf-8")
    _age(path, 3600)
    with pytest.raises(ValueError):
        cache.get(path)
    atomic_write_text(path, json.dumps({"count": 3}))
    _age(path, 3600)
    assert cache.get(path) == 3


def test_the_cache_stays_bounded(tmp_path):
    cache, parsed = _counting_cache(max_entries=3)
    paths = []
    for i in range(5):
        path = tmp_path / f"m{i}.json"
        atomic_write_text(path, json.dumps({"count": i}))
        _age(path, 3600)
        paths.append(path)
    assert [cache.get(path) for path in paths] == [0, 1, 2, 3, 4]
    assert len(cache) == 3
    assert cache.get(paths[0]) == 0 and len(parsed) == 6  # the oldest entry was dropped
