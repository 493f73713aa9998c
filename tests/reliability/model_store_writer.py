"""A training process that only writes versions, for the SIGKILL test (`test_model_store_crash.py`).

`python -m tests.reliability.model_store_writer MODEL_DIR PROJECT_KEY SEED` loads the project's
serving head (`training.slm.SLMClassifier.load`: the test fitted it once, `fitted_head`, the
noisy-label fit on seeded synthetic embeddings; fitting takes seconds, loading milliseconds),
prints `ready`, then writes versions for ever through the path a training run takes
(`TrainingRun._save` → `SLMClassifier.save` → `slm_model.write_version`, then `_publish`'s
`ModelStore.update` of `slm_version` and `prune_versions`) until it is killed. The centroids are
large (2 MB) so that a write lasts long enough for a random kill to land inside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import sklearn  # noqa: F401 - imported by every manifest: before `ready`, so the kill lands among writes

from ml_backend.model_store import ModelStore
from ml_backend.slm_model import next_version, prune_versions, versions_dir
from training.slm import SLMClassifier

LABELS = ["negative", "neutral", "positive"]
DIM = 64
CENTROIDS = (64, 4096)  # float64: 2 MB per version
KEEP_VERSIONS = 3


def fitted_head(seed: int) -> SLMClassifier:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(LABELS), DIM)) * 2
    truth = rng.integers(len(LABELS), size=240)
    embeddings = means[truth] + rng.normal(size=(len(truth), DIM))
    llm = np.full((len(truth), len(LABELS)), 0.1)
    llm[np.arange(len(truth)), truth] = 0.8
    human = np.where(np.arange(len(truth)) < 40, truth, -1)
    return SLMClassifier(method="noisy", label_names=LABELS, encoder_id="synthetic", seed=seed).fit(
        embeddings, llm, human, n_classes=len(LABELS))


def write_one(store: ModelStore, project_key: str, head: SLMClassifier, centroids: np.ndarray, step: int) -> str:
    """One training run's save and publish, as `training.job.TrainingRun` does them."""
    project_dir = store.project_dir(project_key)
    version = next_version(project_dir)
    head.save(versions_dir(project_dir) / version, extra_manifest={"target": "sentiment", "encoder": "synthetic",
                                                                   "step": step},
              extra_arrays={"centroids": centroids})
    store.update(project_key, lambda state: setattr(state, "slm_version", version))
    prune_versions(project_dir, KEEP_VERSIONS, current=version)
    return version


def main(model_dir: str, project_key: str, seed: str) -> None:
    store = ModelStore(Path(model_dir))
    project_dir = store.project_dir(project_key)
    head = SLMClassifier.load(versions_dir(project_dir) / store.load(project_key).slm_version)
    centroids = np.random.default_rng(int(seed)).normal(size=CENTROIDS)
    print("ready", flush=True)
    step = 0
    while True:
        write_one(store, project_key, head, centroids, step)
        step += 1


if __name__ == "__main__":
    main(*sys.argv[1:4])
