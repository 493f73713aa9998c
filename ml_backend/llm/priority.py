"""Interactive calls before background work, on the one model a process holds.

The bulk pre-annotation job and Label Studio's synchronous `/predict` share one LLM per
process (memory: one copy of the weights). A runtime serializes its forward passes with a
`PriorityLock`; code running inside `background_work()` (the job) takes the lock only when
no interactive caller is waiting, so a one-task `/predict` waits for at most the one task
the job is scoring right now, not for the job's whole batch.

The priority is a context variable, so it follows the thread (or task) that set it and
needs no argument threaded through the scorer.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Iterator

_background: contextvars.ContextVar[bool] = contextvars.ContextVar("llm_background_work", default=False)


@contextlib.contextmanager
def background_work() -> Iterator[None]:
    """Mark model calls made inside this block as background work (they yield to interactive ones)."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


def is_background() -> bool:
    return _background.get()


class PriorityLock:
    """A mutex where waiting interactive callers go before waiting background callers.

    Not reentrant. Used as a context manager; the caller's priority comes from
    `background_work()`.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._held = False
        self._interactive_waiting = 0

    def acquire(self, *, background: bool | None = None) -> None:
        background = is_background() if background is None else background
        with self._condition:
            if background:
                while self._held or self._interactive_waiting:
                    self._condition.wait()
            else:
                self._interactive_waiting += 1
                try:
                    while self._held:
                        self._condition.wait()
                finally:
                    self._interactive_waiting -= 1
            self._held = True

    def release(self) -> None:
        with self._condition:
            self._held = False
            self._condition.notify_all()

    @property
    def interactive_waiting(self) -> int:
        return self._interactive_waiting

    def __enter__(self) -> "PriorityLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
