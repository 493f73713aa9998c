"""`lsllm`: label spreadsheets with the backend's engine, outside Label Studio.

    lsllm label reviews.xlsx --text-column review --config sentiment_zh
    lsllm label tickets.csv --text-column body --labels billing,bug,other -o tickets.labeled.csv
    lsllm report tickets.labeled.csv --gold checked_label -o tickets-report/
    lsllm train tickets.labeled.csv --text-column body --labels billing,bug,other --gold-column checked_label
    lsllm to-label-studio tickets.labeled.csv --text-column body --labels billing,bug,other --upload 3

`python -m ml_backend ...` is the same command. Settings (the LLM, the encoder, ...) come from the
same environment variables as the server; file projects live under LSLLM_HOME (default ./.lsllm).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

EXAMPLES = """\
examples:
  # label a CSV with three labels (+ optional definitions), output beside it: tickets.labeled.csv
  lsllm label tickets.csv --text-column body --labels billing,bug,other \\
        --hint "billing=payments, invoices, refunds" --hint "bug=something does not work"

  # a Chinese Excel file with a ready config of this repository (labeling_configs/sentiment_zh.xml)
  lsllm label 评论.xlsx --text-column 评论 --config sentiment_zh

  # NER: entities as JSON with code-point offsets in the column `entities`
  lsllm label news.jsonl --text-column text --config ner_en

  # how far can the scores be trusted? (rows with a checked label in the column `gold`)
  lsllm report tickets.labeled.csv --gold gold -o report/

  # learn from the file's labels + the checked ones, then label again with LLM x SLM
  lsllm train tickets.labeled.csv --text-column body --labels billing,bug,other --gold-column gold
  lsllm label more_tickets.csv --text-column body --labels billing,bug,other

  # send the rows to Label Studio pre-annotated, least-likely-right first
  lsllm to-label-studio tickets.labeled.csv --text-column body --labels billing,bug,other -o import.json
  LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=... \\
  lsllm to-label-studio tickets.labeled.csv --text-column body --labels billing,bug,other --upload 3

Ctrl-C during `label` keeps the rows done so far: run the same command again to continue.
"""


def _add_task_options(parser: argparse.ArgumentParser, *, project: bool = True) -> None:
    group = parser.add_argument_group("what to label (one of --labels / --config / --project)")
    group.add_argument("--labels", help="comma-separated label names, e.g. positive,negative,neutral")
    group.add_argument("--hint", "--hints", action="append", metavar="LABEL=TEXT",
                       help="a label's definition for the LLM (repeat per label; with --labels)")
    group.add_argument("--ner", action="store_true", help="with --labels: named entities instead of one label per row")
    group.add_argument("--config", help="a Label Studio labeling config (XML file), or the name of one in labeling_configs/")
    group.add_argument("--instruction", help="a sentence for the LLM about the task (as the backend's INSTRUCTION)")
    if project:
        group.add_argument("--project", help="a connected Label Studio project's model instead (its config, cold start "
                           "and trained SLM, read from the server's MODEL_DIR, which must be set); nothing of it changes")
    else:
        parser.set_defaults(project=None)
    parser.add_argument("--text-column", required=True, help="the column holding the text to label")
    parser.add_argument("--encoding", help="text encoding of a CSV/TSV/JSONL input (default: detected)")
    parser.add_argument("--home", type=Path, help="where file projects keep their state (default: $LSLLM_HOME or ./.lsllm)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsllm", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Label CSV/XLSX/JSONL files with the Label Studio LLM backend's engine: calibrated "
                    "confidence, a threshold report, training, and a Label Studio import.",
        epilog=EXAMPLES,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every event (one line each) on stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    label = commands.add_parser("label", help="pre-annotate every row; adds label + confidence (NER: entities)",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    label.add_argument("file", type=Path, help="input .csv, .tsv, .xlsx or .jsonl")
    _add_task_options(label)
    label.add_argument("-o", "--output", type=Path, help="output file, same format (default: <name>.labeled.<ext>)")
    label.add_argument("--no-progress", action="store_true", help="no progress bar")
    label.set_defaults(func=cmd_label)

    report = commands.add_parser("report", help="threshold table, AUROC, ECE and plots from rows with a gold label",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    report.add_argument("file", type=Path, help="a labeled file (the output of `lsllm label`)")
    report.add_argument("--gold", required=True, help="the column with checked labels; empty cells are skipped")
    report.add_argument("--label-column", default="label", help="the predicted label (default: label)")
    report.add_argument("--confidence-column", default="confidence", help="the score (default: confidence)")
    report.add_argument("--encoding", help="text encoding of a CSV/TSV/JSONL input (default: detected)")
    report.add_argument("-o", "--output", type=Path, help="directory for report.html, thresholds.csv, "
                        "reliability.png, coverage.png (default: <name>.report/)")
    report.set_defaults(func=cmd_report)

    train = commands.add_parser("train", help="train the SLM from the file's labels (+ checked ones) with the webhook job's code",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    train.add_argument("file", type=Path, help="a file with LLM and/or human labels")
    _add_task_options(train, project=False)
    train.add_argument("--label-column", default="label", help="noisy labels, e.g. the LLM's (default: label)")
    train.add_argument("--confidence-column", default="confidence",
                       help="their confidence, if the file has it (default: confidence)")
    train.add_argument("--gold-column", help="checked (human) labels; empty cells are unlabeled")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    export = commands.add_parser("to-label-studio", help="a Label Studio import JSON with predictions, scores and clusters",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    export.add_argument("file", type=Path, help="a labeled file (the output of `lsllm label`)")
    _add_task_options(export)
    export.add_argument("-o", "--output", type=Path, help="the JSON to import (default: <name>.label-studio.json)")
    export.add_argument("--no-clusters", action="store_true", help="skip the embedding-based cluster ids")
    export.add_argument("--upload", type=int, metavar="PROJECT_ID",
                        help="import into this Label Studio project (LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY) "
                             "and set its queue to uncertainty sampling on this model version")
    export.set_defaults(func=cmd_to_label_studio)
    return parser


# --- commands ----------------------------------------------------------------------------------------
def _definition(args: argparse.Namespace):
    from ml_backend.batch.engine import BatchError, task_definition

    if args.project:
        if args.labels or args.config:
            raise BatchError("--project brings its own labeling config: leave out --labels/--config")
        return None
    return task_definition(config=args.config, labels=args.labels, hints=args.hint, ner=args.ner,
                           instruction=args.instruction)


def _project(args: argparse.Namespace, definition):
    from ml_backend.batch.engine import FileProject, batch_settings

    if args.project:
        return FileProject.attach(args.project, args.settings, runtime_loader=args.runtime_loader,
                                  encoder_loader=args.encoder_loader)
    return FileProject.open(definition, batch_settings(args.settings, args.home),
                            runtime_loader=args.runtime_loader, encoder_loader=args.encoder_loader)


def _bar_factory(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    def factory(total: int, initial: int, description: str):
        return tqdm(total=total, initial=initial, desc=description, unit="row", dynamic_ncols=True, file=sys.stderr)

    return factory


class _StageBar:
    """One tqdm bar for a multi-stage step (cold start, training): stage as its description."""

    def __init__(self, enabled: bool, prefix: str) -> None:
        self.enabled, self.prefix, self.bar, self.stage = enabled, prefix, None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None or stage != self.stage:  # a new stage: a new bar (its own rate and ETA)
            from tqdm import tqdm

            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=f"{self.prefix}: {stage}", unit="task", dynamic_ncols=True, file=sys.stderr)
        self.bar.total, self.bar.n = total, done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_label(args: argparse.Namespace) -> int:
    from ml_backend.batch.files import read_table
    from ml_backend.batch.labeling import checkpoint_path, default_output, label_table

    definition = _definition(args)
    table = read_table(args.file, encoding=args.encoding)
    table.require_column(args.text_column, "--text-column")
    output = args.output or default_output(args.file)
    if output.resolve() == args.file.resolve():
        from ml_backend.batch.engine import BatchError

        raise BatchError("the output would overwrite the input: choose another file with -o")
    project = _project(args, definition)
    stages = _StageBar(not args.no_progress, "cold start")
    try:
        summary = label_table(project, table, args.text_column, output, progress=_bar_factory(not args.no_progress),
                              on_stage=stages)
    except KeyboardInterrupt:
        stages.close()
        print(f"\ninterrupted: the rows done so far are kept in {checkpoint_path(output)}; "
              "run the same command again to continue", file=sys.stderr)
        return 130
    finally:
        stages.close()
    resumed = f" ({summary.resumed} from an earlier run)" if summary.resumed else ""
    print(f"labeled {summary.rows} rows{resumed} with model version {summary.model_version} → {summary.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ml_backend.batch.files import read_table
    from ml_backend.batch.engine import BatchError, confidence_value
    from ml_backend.report import build_report, summary_lines, write_report

    table = read_table(args.file, encoding=args.encoding)
    for column, flag in ((args.gold, "--gold"), (args.label_column, "--label-column"),
                         (args.confidence_column, "--confidence-column")):
        table.require_column(column, flag)
    confidence, correct = [], []
    for index, row in enumerate(table.rows):
        gold, predicted = row[args.gold].strip(), row[args.label_column].strip()
        score = confidence_value(row[args.confidence_column].strip(), index, args.confidence_column)
        if not gold or score is None:
            continue
        confidence.append(score)
        correct.append(_same_labels(predicted, gold))
    if not confidence:
        raise BatchError(f"no row has both a gold label in {args.gold!r} and a confidence: nothing to report on")
    report = build_report(confidence, correct)
    directory = args.output or args.file.with_name(f"{args.file.stem}.report")
    paths = write_report(report, directory, title=f"Threshold report: {args.file.name}")
    for line in summary_lines(report):
        print(line)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _same_labels(predicted: str, gold: str) -> bool:
    """Single labels compare as strings; comma-separated sets (multi-label) as sets."""
    if "," in predicted or "," in gold:
        return {p.strip() for p in predicted.split(",") if p.strip()} == {g.strip() for g in gold.split(",") if g.strip()}
    return predicted == gold


def cmd_train(args: argparse.Namespace) -> int:
    from ml_backend.batch.engine import BatchError, confidence_value, tasks_of
    from ml_backend.batch.files import read_table

    definition = _definition(args)
    table = read_table(args.file, encoding=args.encoding)
    table.require_column(args.text_column, "--text-column")
    has_labels = args.label_column in table.columns
    if not has_labels and not args.gold_column:
        raise BatchError(f"no column {args.label_column!r} and no --gold-column: there is nothing to learn from")
    if args.gold_column:
        table.require_column(args.gold_column, "--gold-column")
    with_text = [i for i, row in enumerate(table.rows) if row[args.text_column].strip()]
    all_tasks = tasks_of(table, args.text_column, definition)
    tasks = [all_tasks[i] for i in with_text]
    rows = [table.rows[i] for i in with_text]
    llm_labels = [row[args.label_column].strip() or None if has_labels else None for row in rows]
    use_confidence = has_labels and args.confidence_column in table.columns
    confidences = [confidence_value(row[args.confidence_column].strip(), i, args.confidence_column)
                   if use_confidence else None for i, row in zip(with_text, rows)]
    gold = [row[args.gold_column].strip() or None if args.gold_column else None for row in rows]
    project = _project(args, definition)
    stages = _StageBar(not args.no_progress, "training")
    try:
        if not has_labels:  # the LLM labels every row first, as the webhook job would
            project.prepare(tasks, on_progress=stages)
        summary = project.train(tasks, llm_labels=llm_labels, confidences=confidences, gold=gold, on_progress=stages)
    finally:
        stages.close()
    print(json.dumps(_train_summary(summary), indent=2, ensure_ascii=False))
    if summary.get("status") == "done":
        print(f"trained {summary['slm_version']}: `lsllm label` with the same --labels/--config now adds "
              "llm_label, slm_label, agreement and llm_wrong_probability")
    return 0 if summary.get("status") in ("done", "skipped") else 1


def _train_summary(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("status", "reason", "slm_version", "model_version", "tasks", "human_labels", "metrics", "timings_s")
    return {k: summary[k] for k in keep if k in summary}


def cmd_to_label_studio(args: argparse.Namespace) -> int:
    from ml_backend.batch.engine import BatchError
    from ml_backend.batch.export import import_tasks, upload
    from ml_backend.batch.files import atomic_write_bytes, read_table

    definition = _definition(args)
    table = read_table(args.file, encoding=args.encoding)
    table.require_column(args.text_column, "--text-column")
    project = _project(args, definition)
    definition = project.definition
    embeddings = None
    if not args.no_clusters:
        texts = [row[args.text_column] for row in table.rows]
        embeddings = project.services.encoders.embed(texts)
    settings = args.settings  # Label Studio's offsets as the server uses them (the file has code points)
    items = import_tasks(table, args.text_column, definition, embeddings, unit=settings.label_studio_offsets)
    output = args.output or args.file.with_name(f"{args.file.stem}.label-studio.json")
    atomic_write_bytes(output, json.dumps(items, ensure_ascii=False, indent=1).encode("utf-8"))
    print(f"wrote {len(items)} tasks with predictions (lowest score first) → {output}")
    if args.upload is not None:
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise BatchError("--upload needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY in the environment")
        answer = upload(items, url=settings.label_studio_url, token=settings.label_studio_api_key,
                        project_id=args.upload, timeout_s=settings.label_studio_timeout_s)
        print(f"imported {answer['task_count']} tasks and {answer['prediction_count']} predictions into project "
              f"{args.upload}; its queue now serves model version {answer['model_version']} by ascending score")
    return 0


# --- entry point --------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None, *, runtime_loader=None, encoder_loader=None) -> int:
    """The command; tests inject a fake LLM / encoder through the loaders (None: the configured ones)."""
    from ml_backend.batch.engine import BatchError
    from ml_backend.batch.files import InputFileError
    from ml_backend.config import SettingsError, load_settings
    from ml_backend.encoders import EncoderUnavailable
    from ml_backend.report import ReportInputError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.runtime_loader, args.encoder_loader = runtime_loader, encoder_loader
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        args.settings = load_settings()  # once per process, from the environment (as the server's)
        return args.func(args)
    except (BatchError, InputFileError, ReportInputError, SettingsError, EncoderUnavailable) as exc:
        print(f"lsllm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlsllm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
