"""Interactive /predict calls go before the background job on the shared model."""

import threading
import time

from ml_backend.llm.priority import PriorityLock, background_work, is_background


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_waiting_interactive_caller_goes_before_a_waiting_background_caller():
    lock = PriorityLock()
    order = []
    lock.acquire(background=True)  # the job is scoring a task

    def background_next():
        with background_work():
            with lock:
                order.append("background")

    def interactive():
        with lock:
            order.append("interactive")

    job = threading.Thread(target=background_next)
    job.start()
    time.sleep(0.05)  # the job's next task is waiting first
    request = threading.Thread(target=interactive)
    request.start()
    _wait_for(lambda: lock.interactive_waiting == 1)
    lock.release()
    job.join(5)
    request.join(5)
    assert order == ["interactive", "background"]


def test_background_priority_is_scoped_to_the_block():
    assert not is_background()
    with background_work():
        assert is_background()
    assert not is_background()


def test_the_lock_is_exclusive():
    lock = PriorityLock()
    inside = []
    peak = []

    def work(background):
        for _ in range(50):
            with background_work() if background else _null():
                with lock:
                    inside.append(1)
                    peak.append(len(inside))
                    inside.pop()

    import contextlib

    _null = contextlib.nullcontext
    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert max(peak) == 1
