"""Round two of CORAL for classification prompts: demonstrations chosen from what was learned.

Round one (`ml_backend.demos`, cold start) shows the LLM examples it labeled itself. Once
annotators have labeled tasks, the prompt can show *their* labels instead: per label, the
k-medoids of that label's examples under the SLM's encoder embeddings (so the demonstrations
spread over what the label looks like in this project), balanced over labels and ordered
round-robin so that no label owns the end of the prompt. Pure: indices in, indices out.
"""

from __future__ import annotations

import numpy as np

from ml_backend.demos import k_medoids, round_robin


def select_learned_demos(embeddings: np.ndarray, labels: np.ndarray, *, k: int = 8, lengths: np.ndarray | None = None,
                         max_chars: int = 300, seed: int = 0) -> list[int]:
    """Up to ``k`` row indices of labeled examples (``labels`` ≥ 0; −1 = not a candidate).

    ``lengths`` (characters per text), when given, keeps texts over ``max_chars`` out unless a
    label has no shorter example (long demonstrations make every prompt's shared prefix slow).
    Labels with fewer examples than their share give the rest of their share to the others.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    vectors = embeddings / np.where(norms > 0, norms, 1.0)
    present = [label for label in np.unique(labels) if label >= 0]
    if not present or k <= 0:
        return []
    members_of = {}
    for label in present:
        members = np.flatnonzero(labels == label)
        if lengths is not None:
            short = members[np.asarray(lengths)[members] <= max_chars]
            members = short if len(short) else members
        members_of[label] = members
    per_label: dict[int, list[int]] = {}
    remaining = k
    for position, label in enumerate(sorted(present, key=lambda lab: len(members_of[lab]))):  # smallest first
        members = members_of[label]
        share = min(len(members), int(np.ceil(remaining / (len(present) - position))))
        remaining -= share
        rows = k_medoids(vectors[members], share, seed=seed) if share > 0 else []
        per_label[label] = [int(members[r]) for r in rows]
    return round_robin({label: per_label[label] for label in present}, k)
