"""`lsllm label`: every row of a file pre-annotated by the service's engine, resumable.

Why a checkpoint: labeling a few thousand rows on a CPU takes an hour; a Ctrl-C, a closed
laptop or a killed job must not cost what was done. Finished rows are appended (and fsynced) to
`<output>.partial.jsonl` chunk by chunk; a rerun of the same command takes them from there (a
row counts as done only for the same text and the same model version). The output file itself is
written once, atomically, when every row is done; the checkpoint is then removed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ml_backend.batch.engine import FileProject, TaskDefinition, tasks_of
from ml_backend.batch.files import Table, write_table
from ml_backend.llm_cache import text_tag

log = logging.getLogger(__name__)

ProgressFactory = Callable[[int, int, str], Any]  # (total, already done, description) -> a tqdm-like bar


def default_output(input_path: Path) -> Path:
    return input_path.with_name(f"{input_path.stem}.labeled{input_path.suffix}")


def checkpoint_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.partial.jsonl")


class Checkpoint:
    """Finished rows of one output file, one JSON line each, after a header naming the model version."""

    def __init__(self, path: Path, model_version: str) -> None:
        self.path = path
        self.model_version = model_version

    def load(self, tags: list[str]) -> dict[int, dict[str, str]]:
        """Rows finished earlier for this model version and these very texts (others are redone)."""
        if not self.path.is_file():
            return {}
        done: dict[int, dict[str, str]] = {}
        with open(self.path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("model_version") != self.model_version:
            log.info("event=checkpoint_discarded path=%s reason=model_version_changed", self.path)
            self.path.unlink(missing_ok=True)
            return {}
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # the line being written when the process died
            row = entry.get("row")
            if isinstance(row, int) and 0 <= row < len(tags) and entry.get("tag") == tags[row]:
                done[row] = entry["values"]
        return done

    def append(self, entries: list[tuple[int, str, dict[str, str]]]) -> None:
        new_file = not self.path.is_file()
        with open(self.path, "a", encoding="utf-8") as handle:
            if new_file:
                handle.write(json.dumps({"model_version": self.model_version}) + "\n")
            for row, tag, values in entries:
                handle.write(json.dumps({"row": row, "tag": tag, "values": values}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def row_values(definition: TaskDefinition, prediction: dict[str, Any], has_text: bool) -> dict[str, str]:
    """The output cells of one row from its Label Studio prediction."""
    values: dict[str, str] = {}
    result = prediction.get("result") or []
    for target in definition.choices_targets:
        chosen = [c for region in result if region.get("from_name") == target.from_name
                  for c in (region.get("value") or {}).get("choices", [])]
        values[definition.label_column(target)] = ", ".join(chosen)
    for target in definition.span_targets:
        entities = [{"start": r["value"]["start"], "end": r["value"]["end"], "label": r["value"]["labels"][0],
                     "text": r["value"]["text"], "score": round(float(r.get("score", 0.0)), 4)}
                    for r in result if r.get("from_name") == target.from_name and r.get("type") == "labels"]
        values[definition.entities_column(target)] = json.dumps(entities, ensure_ascii=False) if has_text else ""
    values["confidence"] = f"{float(prediction.get('score', 0.0)):.4f}" if has_text else ""
    if "mislabeling" in prediction:
        values["llm_wrong_probability"] = f"{float(prediction['mislabeling']):.4f}"
    values["model_version"] = str(prediction.get("model_version", ""))
    return values


@dataclass(frozen=True)
class LabelSummary:
    output: Path
    rows: int
    resumed: int
    model_version: str
    columns: list[str]


def label_table(project: FileProject, table: Table, text_column: str, output: Path, *,
                progress: ProgressFactory | None = None, chunk: int = 16,
                on_stage: Callable[[str, int, int], None] | None = None) -> LabelSummary:
    definition = project.definition
    tasks = tasks_of(table, text_column, definition)
    texts = [row[text_column] for row in table.rows]
    version = project.prepare([t for t, text in zip(tasks, texts) if text.strip()], on_progress=on_stage)
    tags = [text_tag(text) for text in texts]
    checkpoint = Checkpoint(checkpoint_path(output), version)
    done = checkpoint.load(tags)
    todo = [i for i in range(len(tasks)) if i not in done]
    log.info("event=batch_label rows=%d resumed=%d model_version=%s output=%s", len(tasks), len(done), version, output)
    bar = progress(len(tasks), len(done), "labeling") if progress else None
    try:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            part_tasks = [tasks[i] for i in part]
            predictions = project.predict(part_tasks)
            with_text = [i for i in part if texts[i].strip()]
            details = project.model_details([tasks[i] for i in with_text], [texts[i] for i in with_text])
            detail_of = dict(zip(with_text, details)) if details else {}
            entries = []
            for row, prediction in zip(part, predictions):
                values = row_values(definition, prediction, bool(texts[row].strip()))
                values.update(detail_of.get(row, {}))
                entries.append((row, tags[row], values))
                done[row] = values
            checkpoint.append(entries)
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    added = []
    for values in done.values():
        for column in values:
            if column not in added and column not in table.columns:
                added.append(column)
    replaced = [c for c in table.columns if any(c in values for values in done.values())]
    if replaced:
        log.warning("event=batch_columns_replaced columns=%s", ",".join(replaced))
    columns = table.columns + added
    rows = [{**row, **done[i]} for i, row in enumerate(table.rows)]
    write_table(output, columns, rows)
    checkpoint.remove()
    return LabelSummary(output=output, rows=len(rows), resumed=len(tasks) - len(todo), model_version=version,
                        columns=columns)
