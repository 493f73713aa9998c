"""Labels the SLM cannot learn yet: ones the LLM (almost) never chooses and no annotator has used.

Why: the SLM learns from the LLM's labels plus the human ones. A label that neither gives it has
no examples, so the SLM never predicts it, the blend follows the SLM, and every task that belongs
to it is served as some other label, often with a high score: the score cannot rank those errors,
because nothing the models see tells them apart. Measured on ag_news (`benchmarks/bench_slm.py`,
README): the small default LLM chose "Sci/Tech" for 0 of 1,000 tasks and its probability of that
label does not separate the Sci/Tech texts from the rest (AUROC ≈ .5), so the Sci/Tech texts are
served as "Business". Label codes without hints (`CONT`, `PER.NOM`) can go the same way.

No score fixes that before a human label exists; what helps is telling the user. The training run
logs each such label with what to do (`event=training_label_out_of_reach`), and the version's
manifest and metrics list them (`GET /versions`, the status endpoint). One human label of the
label is enough to take it off the list: it is trusted and weighted up in the SLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ml_backend.label_config import Target

MIN_LLM_TASKS = 5  # fewer LLM-labeled tasks than this (and than SHARE_OF_EVEN of an even share): out of reach
SHARE_OF_EVEN = 0.01


@dataclass(frozen=True)
class OutOfReach:
    label: str  # the result value, as Label Studio stores it
    llm_tasks: int  # tasks without a human label whose LLM label (the SLM's teacher) is this one
    tasks: int  # tasks without a human label
    has_hint: bool  # whether the labeling config defines it for the LLM (`hint=`)

    def advice(self) -> str:
        define = ("its hint= in the labeling config did not make the LLM choose it; sharpen it"
                  if self.has_hint else "or add hint=\"<what it means>\" to it in the labeling config so the LLM can tell it apart")
        return (f"the LLM chose it for {self.llm_tasks} of {self.tasks} tasks and no annotator has used it, so the SLM "
                f"cannot predict it: annotate a few tasks with it (the Data Manager's search finds candidates), {define}")


def llm_task_threshold(n_tasks: int, n_labels: int) -> int:
    """How many LLM-labeled tasks a label needs to count as learnable."""
    return max(MIN_LLM_TASKS, math.ceil(SHARE_OF_EVEN * n_tasks / max(1, n_labels)))


def labels_out_of_reach(teacher_probabilities: np.ndarray, human_labels: np.ndarray, target: Target) -> list[OutOfReach]:
    """The labels with no human label and fewer than `llm_task_threshold` LLM-labeled tasks."""
    human_labels = np.asarray(human_labels, dtype=int)
    n_labels = len(target.options)
    unlabeled = human_labels < 0
    if not unlabeled.any():  # every task is labeled: nothing left to pre-annotate
        return []
    llm_counts = np.bincount(np.asarray(teacher_probabilities).argmax(axis=1)[unlabeled], minlength=n_labels)
    human_counts = np.bincount(human_labels[~unlabeled], minlength=n_labels)
    threshold = llm_task_threshold(int(unlabeled.sum()), n_labels)
    return [OutOfReach(label=option.result_value, llm_tasks=int(llm_counts[i]), tasks=int(unlabeled.sum()),
                       has_hint=option.hint is not None)
            for i, option in enumerate(target.options)
            if human_counts[i] == 0 and llm_counts[i] < threshold]
