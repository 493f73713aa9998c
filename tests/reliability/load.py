"""A small asyncio + httpx load driver: concurrent senders, each answer timed against Label Studio's timeouts.

Why not locust: it is not in the venv, and what is measured here fits in one event loop — N senders
that each send their own list of calls one after the other (as N annotators' browsers and Label
Studio's webhook threads do), "repeaters" that keep sending one kind of call until the senders are
done (a few users pressing "Retrieve predictions"), and watchers that poll a status endpoint meanwhile
(to show a background job was running). Nothing here knows pytest: tests/reliability/test_load.py runs
it at a small size in `make test` and at the issue's size in `make soak`.

Bodies are the ones Label Studio 1.23.2 sends (the recorded payloads in tests/fixtures), with ids set.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import httpx

from tests.conftest import ls_payload
from tests.reliability.conftest import percentile

# What Label Studio 1.23 waits for an answer (seconds): a webhook is not retried, /predict drops the batch.
LABEL_STUDIO_TIMEOUTS_S = {"/webhook": 1.0, "/setup": 3.0, "/predict": 100.0}
# The driver itself waits longer, so a slow answer is measured (and counted beyond the timeout), not lost.
CLIENT_TIMEOUT_S = 150.0


@dataclass(frozen=True)
class Call:
    """One request: POST `path` with a JSON `body`, or GET it (body None)."""

    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Sample:
    """One answer: its status (None: no answer at all, `error` says why) and how long it took."""

    path: str
    status: int | None
    seconds: float
    error: str | None = None


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    watched: list[tuple[float, str, dict]] = field(default_factory=list)  # (seconds since start, path, body)
    wall_s: float = 0.0


# --- Label Studio's bodies ---------------------------------------------------------------------------
def annotation_webhook(action: str, project_id: int, annotation_id: int, task_id: int,
                       total_annotations: int, label_config: str) -> Call:
    """An ANNOTATION_CREATED / ANNOTATION_UPDATED webhook as Label Studio 1.23.2 sends it (the recorded
    body: the annotation, its task, the project with its counts and label config), naming one
    annotation of one task."""
    recorded = {"ANNOTATION_CREATED": "webhook_annotation_created_1.json",
                "ANNOTATION_UPDATED": "webhook_annotation_updated_1.json"}[action]
    body = copy.deepcopy(ls_payload(recorded))
    body["annotation"].update(id=annotation_id, task=task_id, project=project_id)
    body["project"].update(id=project_id, total_annotations_number=total_annotations, label_config=label_config)
    if isinstance(body.get("task"), dict):
        body["task"].update(id=task_id, project=project_id)
    return Call("/webhook", body)


def setup_call(project_id: int, label_config: str, hostname: str, access_token: str) -> Call:
    """/setup as Label Studio sends it when a project's ML page or labeling stream opens."""
    return Call("/setup", {"project": f"{project_id}.1795457094", "schema": label_config,
                           "hostname": hostname, "access_token": access_token, "extra_params": None})


def predict_call(project_id: int, label_config: str, tasks: Sequence[dict]) -> Call:
    """/predict of a batch of tasks ({"id", "data"}), as "Retrieve predictions" sends it."""
    return Call("/predict", {"tasks": list(tasks), "project": f"{project_id}.1795457094",
                             "label_config": label_config,
                             "params": {"login": None, "password": None, "context": None}})


def spread(calls: Sequence[Call], senders: int, *, seed: int) -> list[list[Call]]:
    """`calls` shuffled (seeded) and dealt round-robin to `senders` senders."""
    shuffled = list(calls)
    random.Random(seed).shuffle(shuffled)
    return [shuffled[i::senders] for i in range(senders)]


# --- sending -----------------------------------------------------------------------------------------
async def _send(client: httpx.AsyncClient, call: Call) -> Sample:
    started = time.perf_counter()
    try:
        if call.body is None:
            response = await client.get(call.path)
        else:
            response = await client.post(call.path, json=call.body)
    except httpx.HTTPError as exc:
        return Sample(call.path, None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:200])
    return Sample(call.path, response.status_code, time.perf_counter() - started)


async def _sender(client: httpx.AsyncClient, calls: Sequence[Call], samples: list[Sample],
                  pace_s: float = 0.0, rng: random.Random | None = None) -> None:
    """The calls one after the other; with `pace_s`, a pause of uniform(0, 2 × pace_s) before each
    (an annotator between two submissions), else back to back (the server's capacity)."""
    for call in calls:
        if pace_s > 0 and rng is not None:
            await asyncio.sleep(rng.uniform(0, 2 * pace_s))
        samples.append(await _send(client, call))


async def _repeater(client: httpx.AsyncClient, make_call: Callable[[int], Call], samples: list[Sample],
                    done: asyncio.Event) -> None:
    """Send make_call(0), make_call(1), ... until `done` (at least once)."""
    number = 0
    while True:
        samples.append(await _send(client, make_call(number)))
        number += 1
        if done.is_set():
            return


async def _watcher(client: httpx.AsyncClient, paths: Sequence[str], started: float, interval_s: float,
                   watched: list, done: asyncio.Event) -> None:
    while not done.is_set():
        for path in paths:
            try:
                response = await client.get(path)
                watched.append((time.perf_counter() - started, path, response.json()))
            except (httpx.HTTPError, ValueError):
                pass
        try:
            await asyncio.wait_for(done.wait(), timeout=interval_s)
        except asyncio.TimeoutError:
            pass


async def _run(base_url: str, senders: Sequence[Sequence[Call]], repeaters: Sequence[Callable[[int], Call]],
               watch: Sequence[str], watch_interval_s: float, pace_s: float, seed: int) -> LoadResult:
    result = LoadResult()
    limits = httpx.Limits(max_connections=len(senders) + len(repeaters) + 2, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        started = time.perf_counter()
        done = asyncio.Event()
        background = [asyncio.create_task(_repeater(client, make, result.samples, done)) for make in repeaters]
        if watch:
            background.append(asyncio.create_task(
                _watcher(client, watch, started, watch_interval_s, result.watched, done)))
        try:
            await asyncio.gather(*(_sender(client, calls, result.samples, pace_s, random.Random(seed + number))
                                   for number, calls in enumerate(senders)))
        finally:
            done.set()
            await asyncio.gather(*background)
        result.wall_s = time.perf_counter() - started
    return result


def run_load(base_url: str, senders: Sequence[Sequence[Call]], *,
             repeaters: Sequence[Callable[[int], Call]] = (), watch: Sequence[str] = (),
             watch_interval_s: float = 0.5, pace_s: float = 0.0, seed: int = 0) -> LoadResult:
    """Every sender's calls, all senders at once; repeaters and watchers until the last sender is done.

    `pace_s` 0: each sender sends back to back, a closed loop whose latency is senders ÷ throughput
    (what the server can take). `pace_s` > 0: each waits uniform(0, 2 × pace_s) before each call
    (seeded), i.e. about senders ÷ pace_s calls a second, as busy annotators send them."""
    return asyncio.run(_run(base_url, senders, repeaters, watch, watch_interval_s, pace_s, seed))


# --- figures -----------------------------------------------------------------------------------------
def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def endpoint_figures(samples: Sequence[Sample]) -> dict[str, dict[str, Any]]:
    """Per path: count, p50/p99/max (ms), answers beyond Label Studio's timeout (no answer counts as
    beyond), responses >= 500, and the status counts."""
    figures: dict[str, dict[str, Any]] = {}
    for path in sorted({s.path for s in samples}):
        mine = [s for s in samples if s.path == path]
        seconds = [s.seconds for s in mine]
        limit = LABEL_STUDIO_TIMEOUTS_S.get(path)
        statuses: dict[str, int] = {}
        for s in mine:
            key = str(s.status) if s.status is not None else "no answer"
            statuses[key] = statuses.get(key, 0) + 1
        figures[path] = {
            "requests": len(mine),
            "p50_ms": _ms(percentile(seconds, 50)),
            "p99_ms": _ms(percentile(seconds, 99)),
            "max_ms": _ms(max(seconds) if seconds else None),
            "label_studio_timeout_s": limit,
            "beyond_timeout": sum(1 for s in mine if s.status is None or (limit is not None and s.seconds > limit)),
            "responses_5xx": sum(1 for s in mine if s.status is not None and s.status >= 500),
            "no_answer": sum(1 for s in mine if s.status is None),
            "statuses": statuses,
            "errors": sorted({s.error for s in mine if s.error})[:5],
        }
    return figures


def table(figures: dict[str, dict[str, Any]]) -> list[str]:
    """The per-endpoint figures as aligned text lines (printed at the end of the run)."""
    lines = [f"{'endpoint':<10} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>9} "
             f"{'timeout':>7} {'beyond':>6} {'>=500':>5}"]
    for path, f in figures.items():
        lines.append(f"{path:<10} {f['requests']:>8} {f['p50_ms']!s:>8} {f['p99_ms']!s:>8} {f['max_ms']!s:>9} "
                     f"{f['label_studio_timeout_s']!s:>7} {f['beyond_timeout']:>6} {f['responses_5xx']:>5}")
    return lines
