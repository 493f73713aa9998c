"""Shared helpers for benchmark scripts: data loading, fixed demonstrations, tables, JSON output."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SHARED_DIR", REPO_ROOT / ".." / "shared")).resolve()
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# dataset name → labeling config used for it
DATASETS = [
    ("sst2", "sentiment_en.xml"),
    ("ag_news", "topic_en.xml"),
    ("chnsenticorp", "sentiment_zh.xml"),
]


def load_split(dataset: str, split: str, limit: int | None = None) -> list[dict]:
    path = SHARED_DIR / "data" / dataset / f"{split}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} not found: benchmarks need ../shared/data (or SHARED_DIR)")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def demonstrations(dataset: str, target, k: int = 8):
    """k fixed demonstrations from the train split, round-robin over labels, short texts first."""
    from ml_backend.llm.prompts import Demonstration

    by_label: dict[str, list[dict]] = {}
    for row in load_split(dataset, "train", 400):
        by_label.setdefault(row["label"], []).append(row)
    prompt_name = {o.result_value: o.prompt_name for o in target.options}
    pools = [sorted(rows, key=lambda r: len(r["text"]))[: k] for rows in by_label.values()]
    chosen = []
    while len(chosen) < k and any(pools):
        for pool in pools:
            if pool and len(chosen) < k:
                row = pool.pop(0)
                chosen.append(Demonstration(text=row["text"][:300], labels=(prompt_name[row["label"]],)))
    return chosen


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def print_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(_format(r.get(c, ""))) for r in rows)) for c in columns}
    print(f"\n{title}")
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for row in rows:
        print("| " + " | ".join(_format(row.get(c, "")).ljust(widths[c]) for c in columns) + " |")


def write_results(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"\nwrote {path.relative_to(REPO_ROOT)}")
    return path
