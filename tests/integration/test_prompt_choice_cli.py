"""`cli choose-prompt` with the real default model on a small labeled dev file."""

from __future__ import annotations

import json

import pytest

from ml_backend.config import Settings
from ml_backend.label_config import parse_label_config
from ml_backend.model_store import ModelStore
from ml_backend.prompt_choice import stored_variant
from ml_backend.wiring import build_services
from tests.conftest import LABELING_CONFIGS, load_jsonl, shared_path
from tests.integration.services import run_cli

pytestmark = pytest.mark.integration


def test_choose_prompt_scores_every_variant_and_keeps_the_best(tmp_path, model_cache_dir, default_model_path):
    store_dir = tmp_path / "store"
    config = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
    settings = Settings(model_dir=store_dir, demonstrations=4, cold_start_tasks=20)  # as the CLI below
    services = build_services(settings, runtime_loader=lambda: None, preannotation=False)
    before = services.service.setup("11", config)  # what Label Studio's /setup does; no model needed
    rows = load_jsonl(shared_path("data", "sst2", "train.jsonl"), limit=20)
    gold = tmp_path / "dev.jsonl"
    gold.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    env = {"MODEL_DIR": str(store_dir), "CACHE_DIR": str(model_cache_dir), "DEMONSTRATIONS": "4",
           "COLD_START_TASKS": "20"}

    result = run_cli(env, "choose-prompt", "--project", "11", "--gold", str(gold))

    assert result.returncode == 0, result.stderr[-3000:]
    variant_lines = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert len(variant_lines) == 8 and sum(line.lstrip().startswith("*") for line in variant_lines) == 1
    losses = [float(line.split()[-1]) for line in variant_lines]
    assert losses == sorted(losses) and len(set(losses)) > 1  # the variants really differ
    state = ModelStore(store_dir).load("11")
    chosen = stored_variant(state)
    assert chosen is not None and f"chosen: {chosen['name']}" in result.stdout
    assert services.profiles.version(state, parse_label_config(config)) != before

