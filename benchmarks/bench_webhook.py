"""What one `/webhook` and one `/setup` cost, old code against new, side by side (issue 14, load).

Why: at 50 back-to-back senders the load test is throughput-bound (latency ≈ senders ÷ throughput,
README "Load inside Label Studio's timeouts"), so every millisecond of CPU a webhook spends is
latency under load. This measures the CPU one request costs in-process (Flask's test client, the
request runs in the calling thread, so `time.thread_time()` around it is its CPU), without gunicorn,
sockets or the other load, for two code trees: `--baseline` (a git ref, extracted with `git archive`)
and this checkout. Each tree runs in its own interpreter, alternately, `--rounds` times; a run's
figure is its median batch of 100 requests, the table shows the median of the rounds and new ÷ old.

Scenarios, as Label Studio sends them (the load test's bodies: `tests/reliability/load.py`), on a
connected project with a trained SLM version (its manifest is read per event):

* `webhook_waiting`: ANNOTATION_CREATED/UPDATED while fewer than TRAIN_MIN_NEW_ANNOTATIONS events are pending;
* `webhook_coalesced`: the same above the threshold while a training run is queued (coalesced into it);
* `setup_unchanged`: /setup with an unchanged config (Label Studio calls it whenever a project opens);
* the two busiest again with `REDIS_URL` (a throw-away redis-server, no rq worker, so the run stays
  queued), counting Redis round trips per request (what this process sends) and commands
  (`INFO commandstats`; a MULTI … EXEC pipeline is one round trip, several commands).

Then cProfile's top functions (self time) for each tree and scenario.

    .venv/bin/python benchmarks/bench_webhook.py [--baseline main] [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = 7  # the recorded webhook's project created_at is 1795457094: the key "7.1795457094"
PROJECT_KEY = f"{PROJECT}.1795457094"
ANNOTATION_IDS = 200  # the burst's annotations per project: the event set grows to about this
TRAINED_ANNOTATIONS = 150  # what the serving version learned (its manifest)
WARM_UP = 50
BATCH = 100  # requests per timed batch
PROFILE_REQUESTS = 500
PROFILE_TOP = 12


# --- the measuring side: runs inside one interpreter per tree --------------------------------------
def _hold_runner(runner) -> None:
    """Keep the in-process runner's one thread busy, so the training run the webhooks enqueue stays
    queued (what the load test sees while a run waits for its debounce) and no job eats CPU here."""
    import threading
    import types

    release = threading.Event()
    module = types.ModuleType("bench_webhook_hold")
    module.hold = lambda *args, context: release.wait()
    sys.modules[module.__name__] = module
    runner.enqueue("bench_webhook_hold.hold")


def _trained_version(store) -> None:
    """A serving SLM version on disk as the training job leaves it (the webhook reads its manifest's
    counts); the weights are never loaded by /webhook or /setup, so only the manifest is written."""
    version_dir = store.project_dir(PROJECT_KEY) / "slm" / "slm-0001"
    version_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format_version": 1, "kind": "classification", "method": "noisy", "created_at": "2026-12-02T20:00:00Z",
        "encoder": "minilm", "target": "sentiment", "label_names": ["positive", "negative"], "n_classes": 2,
        "counts": {"tasks": 120, "annotations": TRAINED_ANNOTATIONS, "annotations_total": TRAINED_ANNOTATIONS,
                   "clean": 110, "noisy": 10},
        "metrics": {name: 0.8 for name in ("accuracy", "balanced_accuracy", "ece", "auroc", "log_loss")},
        "blend": {"weight": 0.6, "calibration": {"method": "isotonic", "x": [i / 50 for i in range(51)],
                                                 "y": [i / 50 for i in range(51)]}},
        "checksums": {"head.npz": "0" * 64},
    }
    (version_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    an_hour_ago = time.time() - 3600  # a version serves for minutes to days after its run wrote it
    os.utime(version_dir / "manifest.json", (an_hour_ago, an_hour_ago))
    store.update(PROJECT_KEY, lambda state: setattr(state, "slm_version", "slm-0001"))


def _redis_commands(url: str | None) -> int | None:
    if not url:
        return None
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(entry["calls"]) for name, entry in stats.items() if name != "cmdstat_info")


class RoundTrips:
    """Counts what this process sends to Redis: one `send_packed_command` per command or pipeline,
    each a round trip (redis-py waits for the answer before the next)."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        from redis.connection import AbstractConnection

        send = AbstractConnection.send_packed_command
        counter = self

        def counted(connection, command, check_health=True):
            counter.count += 1
            return send(connection, command, check_health)

        AbstractConnection.send_packed_command = counted


ROUND_TRIPS = RoundTrips()


def _build(tmp: Path, scenario: str, redis_url: str | None):
    """A fresh app and a connected project for one scenario; returns (client, bodies, settings)."""
    from ml_backend.app import create_app, services_of
    from ml_backend.config import Settings
    from tests.conftest import LABELING_CONFIGS, KeywordRuntime
    from tests.reliability.load import annotation_webhook, setup_call

    config = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
    waiting = scenario.startswith("webhook_waiting")
    settings = Settings(
        model_dir=tmp / scenario / "store", cache_dir=tmp / "cache", redis_url=redis_url, preannotate_auto=False,
        train_min_new_annotations=10**6 if waiting else 10, train_debounce_s=0,
    )
    keyword_runtime = KeywordRuntime()
    app = create_app(settings, runtime_loader=lambda: keyword_runtime)
    services = services_of(app)
    client = app.test_client()
    setup = setup_call(PROJECT, config, "http://127.0.0.1:9", "0" * 40).body
    answer = client.post("/setup", json=setup)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    _trained_version(services.store)
    if services.runner.kind == "in-process":
        _hold_runner(services.runner)
    if scenario.startswith("setup"):
        return client, "/setup", [setup]
    total = 20 if waiting else ANNOTATION_IDS  # waiting: a small count (drift below the threshold)
    bodies = [annotation_webhook("ANNOTATION_CREATED" if i % 2 == 0 else "ANNOTATION_UPDATED", PROJECT,
                                 1000 + i % ANNOTATION_IDS, 100 + i % ANNOTATION_IDS, total, config).body
              for i in range(2 * ANNOTATION_IDS)]
    return client, "/webhook", bodies


def _measure(scenario: str, requests: int, redis_url: str | None) -> dict:
    import cProfile
    import pstats

    tmp = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    try:
        if redis_url:
            import redis

            redis.Redis.from_url(redis_url).flushall()
        client, path, bodies = _build(tmp, scenario, redis_url)
        statuses: dict[str, int] = {}

        def send(count: int, offset: int = 0) -> None:
            for i in range(count):
                answer = client.post(path, json=bodies[(offset + i) % len(bodies)])
                status = f"{answer.status_code} {(answer.get_json() or {}).get('status', '')}".strip()
                statuses[status] = statuses.get(status, 0) + 1

        send(WARM_UP)
        statuses.clear()
        commands_before, trips_before = _redis_commands(redis_url), ROUND_TRIPS.count
        cpu_batches, wall_batches = [], []
        for start in range(0, requests, BATCH):
            count = min(BATCH, requests - start)
            cpu, wall = time.thread_time(), time.perf_counter()
            send(count, WARM_UP + start)
            cpu_batches.append((time.thread_time() - cpu) / count)
            wall_batches.append((time.perf_counter() - wall) / count)
        commands, trips = _redis_commands(redis_url), ROUND_TRIPS.count - trips_before
        measured = dict(statuses)
        profiler = cProfile.Profile()
        profiler.enable()
        send(PROFILE_REQUESTS, WARM_UP + requests)
        profiler.disable()
        stats = pstats.Stats(profiler)
        top = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:PROFILE_TOP]  # tottime
        return {
            # the median batch: a shared machine's bursts of other work inflate some batches, not the median
            "cpu_ms": 1000 * statistics.median(cpu_batches), "wall_ms": 1000 * statistics.median(wall_batches),
            "statuses": measured,
            "redis_commands": None if commands is None else (commands - commands_before) / requests,
            "redis_round_trips": None if commands is None else trips / requests,
            "profile_top": [{"function": f"{Path(file).name}:{line}({name})", "calls_per_request": calls / PROFILE_REQUESTS,
                             "self_ms_per_request": 1000 * tottime / PROFILE_REQUESTS,
                             "cumulative_ms_per_request": 1000 * cumtime / PROFILE_REQUESTS}
                            for (file, line, name), (_, calls, tottime, cumtime, _) in top],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_tree(scenarios: list[str], requests: int, redis_url: str | None) -> dict:
    import logging

    results = {}
    if redis_url:
        ROUND_TRIPS.install()
    for scenario in scenarios:
        url = redis_url if scenario.endswith("_redis") else None
        if scenario.endswith("_redis") and not redis_url:
            continue
        results[scenario] = _measure(scenario, requests, url)
        logging.getLogger().handlers.clear()  # the next create_app configures logging again
    return results


# --- the comparing side ------------------------------------------------------------------------------
SCENARIOS = ["webhook_waiting", "webhook_coalesced", "setup_unchanged", "webhook_coalesced_redis", "setup_unchanged_redis"]


def extract(ref: str, into: Path) -> Path:
    """The tree of `ref` (a commit, a branch) as plain files: the old code, importable as it was."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def start_redis(workdir: Path) -> tuple[subprocess.Popen | None, str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server not found: the Redis scenarios are skipped")
        return None, None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            redis.Redis.from_url(url).ping()
            return process, url
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start")


def run_tree(tree: Path, requests: int, redis_url: str | None, log_path: Path) -> dict:
    """One interpreter importing `ml_backend` (and the test fakes) from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", str(tree), "--requests", str(requests)]
    if redis_url:
        command += ["--redis-url", redis_url]
    with open(log_path, "ab") as log:
        done = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=log, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed (exit {done.returncode}); see {log_path}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def compare(rounds: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for scenario in SCENARIOS:
        old = [r[scenario] for r in rounds["old"] if scenario in r]
        new = [r[scenario] for r in rounds["new"] if scenario in r]
        if not old or not new:
            continue
        row = {"scenario": scenario}
        for name in ("cpu_ms", "wall_ms"):
            before, after = statistics.median(r[name] for r in old), statistics.median(r[name] for r in new)
            row |= {f"{name} old": before, f"{name} new": after, f"{name} new/old": after / before}
        for name, label in (("redis_round_trips", "redis trips"), ("redis_commands", "redis cmds")):
            for side, runs in (("old", old), ("new", new)):
                value = runs[0].get(name)
                row[f"{label} {side}"] = value if value is not None else "-"
        row["statuses new"] = ", ".join(f"{k}×{v}" for k, v in sorted(new[0]["statuses"].items()))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="main", help="git ref of the old code (default: main)")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per scenario and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs per tree")
    parser.add_argument("--no-redis", action="store_true", help="skip the REDIS_URL scenarios")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure the tree at this path
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        sys.path.insert(0, args.measure)
        import ml_backend

        assert Path(ml_backend.__file__).resolve().is_relative_to(Path(args.measure).resolve()), ml_backend.__file__
        print(json.dumps(measure_tree(SCENARIOS, args.requests, args.redis_url)))
        return

    sys.path.insert(0, str(REPO))
    from benchmarks.common import print_table, write_results

    work = Path(tempfile.mkdtemp(prefix="bench-webhook-trees-"))
    redis_process = None
    try:
        old_tree = extract(args.baseline, work / "old")
        redis_process, redis_url = (None, None) if args.no_redis else start_redis(work)
        rounds: dict[str, list[dict]] = {"old": [], "new": []}
        for number in range(args.rounds):
            for side, tree in (("old", old_tree), ("new", REPO)):
                started = time.perf_counter()
                rounds[side].append(run_tree(tree, args.requests, redis_url, work / "measure.log"))
                print(f"round {number + 1}/{args.rounds} {side}: {time.perf_counter() - started:.0f} s", flush=True)
        rows = compare(rounds)
        print_table(f"CPU and wall time per request, in-process (median of {args.rounds} rounds, "
                    f"{args.requests} requests each; old = {args.baseline})", rows)
        for side in ("old", "new"):
            for scenario, result in rounds[side][-1].items():
                print_table(f"cProfile, {side}, {scenario}: top {PROFILE_TOP} by self time (ms per request)",
                            [{"function": p["function"][:70], "calls": p["calls_per_request"],
                              "self": p["self_ms_per_request"], "cumulative": p["cumulative_ms_per_request"]}
                             for p in result["profile_top"]])
        baseline = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
                                  capture_output=True, text=True).stdout.strip()
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "ml_backend"],
                                    capture_output=True, text=True).stdout.strip())
        write_results("webhook_cost", {
            "baseline": {"ref": args.baseline, "commit": baseline}, "new": {"commit": head, "uncommitted_changes": dirty},
            "requests": args.requests, "rounds": args.rounds, "machine": f"{os.cpu_count()} CPUs",
            "load_average_1m": os.getloadavg()[0], "comparison": rows, "runs": rounds,
        })
    finally:
        if redis_process is not None:
            redis_process.kill()
            redis_process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
