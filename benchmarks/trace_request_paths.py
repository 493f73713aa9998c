"""How much code a reader follows for the two request paths (architecture issue: "hops").

Runs each path once in-process with the fake LLM of the unit tests and an in-memory Label
Studio, records every function of `ml_backend/` that runs (sys.setprofile, all threads), and
prints how many distinct functions and files each path touches:

* /predict of two tasks of a connected project whose cold start is done (scored in the request);
* a TASKS_CREATED webhook → the background job → predictions written to Label Studio.

Run it on two checkouts to compare (`git worktree add /tmp/before <commit>`):

    .venv/bin/python benchmarks/trace_request_paths.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_backend.config import Settings  # noqa: E402
from tests.conftest import LABELING_CONFIGS, KeywordRuntime  # noqa: E402
from tests.fakes import FakeLabelStudio  # noqa: E402

PROJECT = "7.1795457094"
PACKAGE = str(REPO / "ml_backend")


class Tracer:
    """Distinct ml_backend functions (file, name) called while active, from every thread."""

    def __init__(self) -> None:
        self.functions: set[tuple[str, str]] = set()
        self.edges: set[tuple[tuple[str, str], tuple[str, str]]] = set()
        self.depth = 0  # the longest chain of ml_backend calls: the hops from the entry point down

    def _profile(self, frame, event, _arg):
        if event != "call":
            return
        code = frame.f_code
        if not code.co_filename.startswith(PACKAGE) or code.co_name.startswith("<"):
            return
        callee = (Path(code.co_filename).relative_to(REPO).as_posix(), code.co_qualname)
        self.functions.add(callee)
        depth, outer = 1, frame.f_back
        while outer is not None:
            depth += outer.f_code.co_filename.startswith(PACKAGE)
            outer = outer.f_back
        self.depth = max(self.depth, depth)
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(PACKAGE):
            caller = caller.f_back
        if caller is not None:
            self.edges.add(((Path(caller.f_code.co_filename).relative_to(REPO).as_posix(), caller.f_code.co_qualname), callee))

    def __enter__(self) -> "Tracer":
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *_exc) -> None:
        sys.setprofile(None)
        threading.setprofile(None)

    def summary(self) -> dict:
        files = defaultdict(int)
        for file, _ in self.functions:
            files[file] += 1
        return {"functions": len(self.functions), "files": len(files), "call_edges": len(self.edges),
                "max_depth": self.depth,
                "per_file": dict(sorted(files.items()))}


def _app(settings: Settings, fake: FakeLabelStudio):
    from ml_backend.app import create_app

    app = create_app(settings, runtime_loader=KeywordRuntime)
    try:  # after the architecture issue: the composition root's services
        from ml_backend.app import services_of

        services = services_of(app)
        services.client_factory = lambda state: fake
        return app, services.runner
    except ImportError:  # before it
        bulk = app.extensions["llm_backend"].bulk
        bulk.context.client_factory = lambda state: fake
        return app, bulk.context.runner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    config = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
    texts = [f"{'positive' if i % 3 else 'negative'} review number {i}" for i in range(30)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(model_dir=Path(tmp) / "store", cache_dir=Path(tmp) / "cache", redis_url=None,
                            preannotate_auto=True, job_retries=0, demonstrations=2, cold_start_tasks=20)
        fake = FakeLabelStudio.with_texts(texts)
        app, runner = _app(settings, fake)
        app.test_client().post("/setup", json={"project": PROJECT, "schema": config})  # cold start + all tasks
        assert runner.wait_idle(120)
        # A fresh process on the same store: nothing cached, and its job thread starts inside the
        # tracer below (a profile hook reaches only threads started after it is set).
        app, runner = _app(settings, fake)
        client = app.test_client()

        with Tracer() as predict:
            answer = client.post("/predict", json={"project": PROJECT, "label_config": config,
                                                   "tasks": [{"id": 1, "data": {"text": texts[0]}},
                                                             {"id": 2, "data": {"text": texts[1]}}]})
        assert answer.status_code == 200, answer.json

        new_ids = [101, 102]
        for task_id in new_ids:
            fake.task_data[task_id] = {"text": f"positive import {task_id}"}
        with Tracer() as webhook:
            reply = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 7},
                                                  "tasks": [{"id": t} for t in new_ids]})
            assert reply.status_code == 200, reply.json
            assert runner.wait_idle(120)
        written = {p["task"] for p in fake.predictions.values()}
        assert set(new_ids) <= written, "the job did not write the imported tasks"

    report = {"predict": predict.summary(), "tasks_created_to_write": webhook.summary()}
    for name, figures in report.items():
        print(f"{name:24s} functions={figures['functions']:3d} files={figures['files']:2d} "
              f"call_edges={figures['call_edges']:3d} max_depth={figures['max_depth']:2d}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
