"""Choosing a project's prompt variant on a labeled dev set (`cli choose-prompt`).

Every variant of `prompt_variants.DEFAULT_VARIANTS` is scored on the dev texts; the lowest
log-loss is kept for the project (a new model_version). Variants with demonstrations use the
project's cold-start demonstrations, learned first from the dev texts (not their labels) if
missing. The pure parts live in `prompt_choice` and `prompt_variants`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ml_backend.cold_start import cold_start_of, cold_start_targets
from ml_backend.errors import BadRequest
from ml_backend.inference import Inference
from ml_backend.model_store import ModelStore
from ml_backend.profile import Profiles
from ml_backend.prompt_choice import config_fingerprint, evaluate_variants
from ml_backend.prompt_variants import DEFAULT_VARIANTS
from ml_backend.round_one import RoundOne

log = logging.getLogger(__name__)


class PromptTuning:
    def __init__(self, store: ModelStore, profiles: Profiles, inference: Inference, round_one: RoundOne) -> None:
        self.store = store
        self.profiles = profiles
        self.inference = inference
        self.round_one = round_one

    def choose(
        self, project_key: str, texts: list[str], labels: list[str], *, target_name: str | None = None
    ) -> dict[str, Any]:
        state = self.store.load(project_key)
        if not state.label_config:
            raise BadRequest("Unknown project: call /setup first.", hint="Connect the project in Label Studio.")
        spec = self.profiles.of_state(state).spec
        candidates = [t for t in cold_start_targets(spec) if target_name in (None, t.from_name)]
        if not candidates:
            raise BadRequest(
                "No single-choice <Choices> block to choose a prompt for"
                + (f" named {target_name!r}." if target_name else "."),
                hint="Pass --target with the from_name of a single-choice <Choices> block.",
            )
        target = candidates[0]
        names = {o.result_value: i for i, o in enumerate(target.options)}
        unknown = sorted({label for label in labels if label not in names})
        if unknown:
            raise BadRequest(
                f"Labels not in the config's <Choices name={target.from_name!r}>: {unknown[:5]}",
                hint=f"Use the stored values (alias if set): {sorted(names)}",
            )
        if len(texts) != len(labels) or len(texts) < 10:
            raise BadRequest("The dev set needs at least 10 labeled texts.", hint="Label more tasks or add rows.")
        if self.profiles.needs_cold_start(state, spec):
            self.round_one.run(project_key, [{"data": {target.data_key: t}} for t in texts])
            state = self.store.load(project_key)
        learned = cold_start_of(state, self.profiles.cold_start_basis(state, spec)).get(target.from_name)
        demos = learned.demonstrations if learned else ()
        started = time.perf_counter()
        best, losses, biases = evaluate_variants(
            self.inference.scorer, self.profiles.base_options(state), target, texts,
            np.array([names[label] for label in labels]), demos, DEFAULT_VARIANTS,
        )
        chosen = {
            **best.as_dict(),
            "config": config_fingerprint(state.label_config),
            "label_bias": {target.from_name: biases[best.name]} if best.name in biases else {},
            "dev_tasks": len(texts),
        }
        state = self.store.update(project_key, lambda state: setattr(state, "prompt_variant", chosen))
        version = self.profiles.version(state, spec)
        log.info(
            "event=prompt_chosen project=%s variant=%r log_loss=%.4f dev_tasks=%d model_version=%s ms=%d",
            project_key, best.name, losses[best.name], len(texts), version, (time.perf_counter() - started) * 1000,
        )
        return {"chosen": best.name, "log_loss": losses, "model_version": version, "target": target.from_name}
