"""Command line for background work: pre-annotate, watch progress, run an rq worker.

    python -m ml_backend.cli preannotate --project 3 [--tasks 1,2,3] [--here] [--wait]
    python -m ml_backend.cli status [--project 3]
    python -m ml_backend.cli new-version --project 3
    python -m ml_backend.cli cold-start --project 3
    python -m ml_backend.cli choose-prompt --project 3 --gold dev.jsonl
    python -m ml_backend.cli train --project 3 [--here] [--wait]
    python -m ml_backend.cli versions --project 3
    python -m ml_backend.cli rollback --project 3 [--to slm-0002]
    python -m ml_backend.cli auto-accept --project 3 [--threshold 0.97 | --target-accuracy 0.98] [--undo]
    python -m ml_backend.cli worker [--burst]

Settings come from the environment, as for the server (REDIS_URL, MODEL_DIR, LABEL_STUDIO_URL, ...):
`main()` builds them once and hands them to the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ml_backend.config import Settings, SettingsError, load_settings

DESCRIPTION = """Background pre-annotation for the Label Studio LLM backend.

With REDIS_URL set, `preannotate` queues a job for the rq workers (coalesced with any job
already queued for the project) and `status` shows the progress every worker reports.
Without REDIS_URL (or with --here) the job runs in this process, with a progress bar.
The project must have been connected to the backend (Label Studio's /setup stores its
labeling config in MODEL_DIR), and the backend needs Label Studio's URL and token:
LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY, or the ones /setup stored.

Without REDIS_URL, prefer `POST /preannotate` on the running server: a job run here does
not coordinate with the server's own in-process job."""


def _task_ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise SystemExit(f"--tasks must be comma-separated task ids, got {text!r}") from None


def _require_project(settings: Settings, project: str) -> str:
    """The store key of a connected project ("3" → "3.1795612540", its newest instance here)."""
    from ml_backend.model_store import ModelStore

    store = ModelStore(settings.model_dir)
    key = store.resolve(project)
    if not store.exists(key):
        raise SystemExit(
            f"project {project} is unknown in MODEL_DIR={settings.model_dir}: connect it to the backend in "
            "Label Studio first (that calls /setup), and run this command with the server's MODEL_DIR"
        )
    return key


def _services(settings: Settings, *, preannotation: bool = True):
    """This command's services, from the composition root (the model loads only if a command scores)."""
    from ml_backend.wiring import build_services

    return build_services(settings, preannotation=preannotation)


def cmd_preannotate(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from ml_backend.jobs import new_job_id, run_job
    from ml_backend.preannotate import JOB, coalesce_key, request_key, trigger

    project = _require_project(settings, str(args.project))
    context = _services(settings)
    task_ids = _task_ids(args.tasks)

    if settings.redis_url and not args.here:
        enqueued = trigger(context, project, task_ids, reason="cli")
        print(f"{'joined queued' if enqueued.coalesced else 'queued'} job {enqueued.job_id} for project {project}")
        return _watch(context, project) if args.wait else 0

    # In this process: record the request, then run the job here (still coalesced through the lease).
    context.kv.sadd(request_key(project), ["*"] if task_ids is None else [str(t) for t in task_ids])
    bar = tqdm(total=0, unit="task", desc=f"project {project}", dynamic_ncols=True)

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        summary = run_job(
            JOB, [project], coalesce_key(project), new_job_id("cli"), context=context,
            job_kwargs={"on_progress": on_progress},
        )
    finally:
        bar.close()
    print(json.dumps(summary, indent=2))
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """The project's threshold report as files: what `GET /report?project=ID` shows, for a shared drive."""
    from ml_backend.errors import BackendError
    from ml_backend.report import summary_lines, table_markdown, write_report

    project = _require_project(settings, str(args.project))
    services = _services(settings, preannotation=False)
    try:
        report, meta = services.service.reports.build(project)
    except BackendError as exc:  # not connected, no single-choice config, nothing reviewed yet
        raise SystemExit(f"error: {exc.message} {exc.hint}".rstrip()) from None
    directory = args.output or Path(f"report-project-{args.project}")
    paths = write_report(report, directory, title=f"Threshold report: project {meta['project']} "
                         f"({meta['reviewed']} reviewed tasks, {meta['model_version']})")
    print(table_markdown(report))
    print("\n".join(summary_lines(report)))
    print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0


def _watch(context, project: str) -> int:
    from tqdm import tqdm

    from ml_backend.progress import DONE, FAILED, RUNNING, ProgressStore

    store = ProgressStore(context.kv)
    bar = tqdm(total=0, unit="task", desc=f"project {project}", dynamic_ncols=True)
    seen_running = False
    try:
        while True:
            record = store.get(project)
            if record is not None:
                bar.total, bar.n = record.total, record.done
                bar.set_postfix(state=record.state, version=record.model_version or "-")
                seen_running |= record.state == RUNNING
                if seen_running and record.state in (DONE, FAILED):
                    bar.refresh()
                    if record.state == FAILED:
                        print(f"\nfailed: {record.last_error}", file=sys.stderr)
                        return 1
                    return 0
            time.sleep(1)
    finally:
        bar.close()


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """Train the project's SLM now: queued for the workers (REDIS_URL), or here with a progress bar."""
    from tqdm import tqdm

    from ml_backend import keys
    from ml_backend.jobs import new_job_id, run_job
    from ml_backend.retraining import FORCE_EVENT, TRAIN_JOB, coalesce_key

    project = _require_project(settings, str(args.project))
    services = _services(settings)
    if settings.redis_url and not args.here:
        answer = services.retraining.start(project, reason="cli")
        print(f"{'joined queued' if answer['coalesced'] else 'queued'} training job {answer['job']} for project {project}")
        return _watch_training(services, project) if args.wait else 0
    services.kv.sadd(keys.training_events(project), [f"{FORCE_EVENT}:{time.time_ns()}"])
    bar = tqdm(total=0, unit="task", desc=f"project {project}", dynamic_ncols=True)

    def on_progress(stage: str, done: int, total: int) -> None:
        bar.set_description(f"project {project}: {stage}")
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        summary = run_job(TRAIN_JOB, [project], coalesce_key(project), new_job_id("cli-train"), context=services,
                          job_kwargs={"on_progress": on_progress})
    finally:
        bar.close()
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0 if summary.get("status") in ("done", "skipped") else 1


def _watch_training(services, project: str) -> int:
    while True:
        status = services.retraining.status(project)
        if status.get("state") in ("done", "skipped", "failed"):
            print(json.dumps(status, indent=2, ensure_ascii=False))
            return 1 if status["state"] == "failed" else 0
        time.sleep(2)


def cmd_versions(args: argparse.Namespace, settings: Settings) -> int:
    project = _require_project(settings, str(args.project))
    services = _services(settings, preannotation=False)
    print(json.dumps({"project": project, "model_versions": services.service.versions(project),
                      "slm_versions": services.retraining.versions(project)}, indent=2, ensure_ascii=False))
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    project = _require_project(settings, str(args.project))
    services = _services(settings)
    try:
        slm_version, model_version = services.publisher.rollback_slm(project, args.to)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"project {project} now serves {slm_version} as {model_version}; every unlabeled task is re-annotated")
    return 0


def cmd_auto_accept(args: argparse.Namespace, settings: Settings) -> int:
    """Run the auto-accept pass on the project's current version now, or undo every automatic annotation."""
    from ml_backend.auto_accept import AutoAccept, auto_accept_pass, single_choice_target

    project = _require_project(settings, str(args.project))
    services = _services(settings, preannotation=False)
    state = services.store.load(project)
    client = services.label_studio(state)
    if args.undo:
        removed = AutoAccept(client, project).undo()
        print(f"project {args.project}: removed {removed} automatic annotation(s); the tasks are unlabeled again "
              "(run `preannotate` so they get the current version's predictions)")
        return 0
    if args.threshold is not None or args.target_accuracy is not None:  # the command line wins over settings
        fixed, target_accuracy = args.threshold, args.target_accuracy
    else:
        fixed, target_accuracy = settings.auto_accept_threshold, settings.auto_accept_target_accuracy
    if fixed is None and target_accuracy is None:
        raise SystemExit("error: give --threshold or --target-accuracy (or set AUTO_ACCEPT_THRESHOLD / "
                         "AUTO_ACCEPT_TARGET_ACCURACY); `GET /report?project=ID` shows the thresholds")
    profile = services.profiles.of_state(state)
    summary = auto_accept_pass(
        client, project, profile.version, single_choice_target(profile.spec.classification_targets), fixed,
        target_accuracy, lambda batch: services.inference.score_tasks(profile, [task.as_task() for task in batch]),
    )
    print(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False))
    return 0 if summary.threshold is not None else 1


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in (0, 1]")
    return value


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_url:
        raise SystemExit("status needs REDIS_URL (without Redis, progress lives in the server: GET /preannotate/status)")
    services = _services(settings)
    bulk = services.bulk
    payload = bulk.status(services.store.resolve(str(args.project))) if args.project else {
        "projects": bulk.all_status()
    }
    print(json.dumps(payload, indent=2))
    return 0


def cmd_new_version(args: argparse.Namespace, settings: Settings) -> int:
    project = _require_project(settings, str(args.project))
    if not settings.redis_url:
        print("note: without REDIS_URL the job runs in the server only after its next /setup", file=sys.stderr)
    version = _services(settings).publisher.publish_new_version(project)
    print(f"project {args.project}: new model version {version}; pre-annotation queued")
    return 0


def cmd_cold_start(args: argparse.Namespace, settings: Settings) -> int:
    from ml_backend.preannotate import trigger

    project = _require_project(settings, str(args.project))
    context = _services(settings)
    state = context.store.load(project)
    tasks = [task.as_task() for task in context.label_studio(state).tasks()]
    print(f"project {project}: learning from up to {settings.cold_start_tasks} of {len(tasks)} tasks ...", file=sys.stderr)
    version = context.round_one.run(project, tasks)
    print(f"project {project}: new model version {version}")
    if settings.redis_url:
        trigger(context, project, None, reason="cold_start")
        print("pre-annotation under the new version queued")
    else:
        print("the server's next /setup (or POST /preannotate) re-annotates under the new version")
    return 0


def read_gold(path: str, text_field: str, label_field: str) -> tuple[list[str], list[str]]:
    """Rows of a labeled dev file: JSONL, a JSON list (e.g. Label Studio's JSON-MIN export) or CSV."""
    import csv
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"--gold {path}: no such file")
    raw = file.read_text(encoding="utf-8-sig")
    if file.suffix.lower() == ".csv":
        rows = list(csv.DictReader(raw.splitlines()))
    elif raw.lstrip().startswith("["):
        rows = json.loads(raw)
    else:
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
    texts, labels = [], []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or text_field not in row or label_field not in row:
            raise SystemExit(
                f"--gold {path}: row {number} lacks {text_field!r} or {label_field!r} "
                "(set --text-field / --label-field to your column names)"
            )
        label = row[label_field]
        if isinstance(label, dict):  # JSON-MIN export of a choices result: {"choices": [...]}
            label = (label.get("choices") or [None])[0]
        texts.append(str(row[text_field]))
        labels.append(str(label))
    return texts, labels


def cmd_choose_prompt(args: argparse.Namespace, settings: Settings) -> int:
    from ml_backend.errors import BadRequest

    project = _require_project(settings, str(args.project))
    texts, labels = read_gold(args.gold, args.text_field, args.label_field)
    try:
        report = _services(settings, preannotation=False).prompt_tuning.choose(
            project, texts, labels, target_name=args.target
        )
    except BadRequest as exc:
        raise SystemExit(f"{exc.message} {exc.hint or ''}".strip()) from None
    width = max(len(name) for name in report["log_loss"])
    print(f"dev log-loss per prompt variant ({len(texts)} tasks, <Choices name={report['target']!r}>):")
    for name, loss in sorted(report["log_loss"].items(), key=lambda item: item[1]):
        print(f"  {'*' if name == report['chosen'] else ' '} {name:<{width}}  {loss:.4f}")
    print(f"chosen: {report['chosen']}; new model version {report['model_version']}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from ml_backend.app import configure_logging
    from ml_backend.jobs import build_rq_worker

    if not settings.redis_url:
        raise SystemExit("worker needs REDIS_URL")
    configure_logging(settings.log_level)
    from ml_backend.wiring import worker_services

    worker_services(settings)  # the jobs of this worker run with these settings (model loads on the first)
    # Jobs run in this process (the model loads once and serves every job); the scheduler runs
    # the delayed retries; a killed worker's job is retried by another (see build_rq_worker).
    worker = build_rq_worker(settings)
    worker.work(burst=args.burst, with_scheduler=True, logging_level=settings.log_level.upper())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml_backend.cli", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    pre = commands.add_parser("preannotate", help="pre-annotate a project (or some of its tasks) in the background")
    pre.add_argument("--project", required=True, type=int, help="Label Studio project id")
    pre.add_argument("--tasks", help="comma-separated task ids (default: every task of the project)")
    pre.add_argument("--here", action="store_true", help="run the job in this process even when REDIS_URL is set")
    pre.add_argument("--wait", action="store_true", help="with REDIS_URL: follow the queued job's progress")
    pre.set_defaults(func=cmd_preannotate)

    refresh = commands.add_parser(
        "queue-refresh",
        help="re-apply the review queue now (what POST /queue/refresh does)",
        description="Runs the project's pre-annotation job: every unlabeled task without a prediction of the current "
        "version gets one (score = P(correct), cluster), then the project is pointed at that version with "
        "uncertainty sampling and the 'Review queue' view is created if it is missing (QUEUE_ORDERING). After a "
        "new version this happens by itself; run it after changing the project's sampling by hand.",
    )
    refresh.add_argument("--project", required=True, type=int, help="Label Studio project id")
    refresh.add_argument("--here", action="store_true", help="run the job in this process even when REDIS_URL is set")
    refresh.add_argument("--wait", action="store_true", help="with REDIS_URL: follow the queued job's progress")
    refresh.set_defaults(func=cmd_preannotate, tasks=None)

    report = commands.add_parser(
        "report",
        help="a project's threshold report as files: table (CSV, Markdown), reliability and coverage PNGs, HTML",
        description="Compares the current pre-annotations with the project's human labels (its reviewed tasks): "
        "threshold -> coverage, accuracy, count; AUROC; ECE; the thresholds reaching 95% and 98% accuracy. "
        "The same numbers as GET /report?project=ID. Prints the table as Markdown.",
    )
    report.add_argument("--project", required=True, type=int, help="Label Studio project id")
    report.add_argument("-o", "--output", type=Path, help="directory for the files (default: report-project-<id>/)")
    report.set_defaults(func=cmd_report)

    status = commands.add_parser("status", help="progress of background pre-annotation (needs REDIS_URL)")
    status.add_argument("--project", type=int, help="one project (default: all)")
    status.set_defaults(func=cmd_status)

    version = commands.add_parser(
        "new-version", help="bump a project's model version (as a retrain does) and re-annotate every unlabeled task"
    )
    version.add_argument("--project", required=True, type=int)
    version.set_defaults(func=cmd_new_version)

    cold = commands.add_parser(
        "cold-start",
        help="learn self-labeled demonstrations and the label bias from the project's tasks now",
        description="Round one before any human label: reads up to COLD_START_TASKS of the project's tasks "
        "through Label Studio's API, picks DEMONSTRATIONS diverse confident ones as in-context examples and "
        "estimates the model's label prior. The pre-annotation job does this by itself for a new project; "
        "run it by hand after importing many more tasks.",
    )
    cold.add_argument("--project", required=True, type=int)
    cold.set_defaults(func=cmd_cold_start)

    choose = commands.add_parser(
        "choose-prompt",
        help="choose the project's prompt variant by log-loss on a labeled dev file",
        description="Scores the prompt variants of training/prompt_selection.py (definitions on/off, 0/4/8 "
        "demonstrations, first-token or full-label read-out, bias correction) on the labeled rows of --gold "
        "and keeps the one with the lowest log-loss for this project (a new model version). 50 rows are plenty.",
    )
    choose.add_argument("--project", required=True, type=int)
    choose.add_argument("--gold", required=True, help="JSONL, JSON list or CSV with a text and a label per row")
    choose.add_argument("--text-field", default="text", help="column holding the text (default: text)")
    choose.add_argument("--label-field", default="label", help="column holding the label value (default: label)")
    choose.add_argument("--target", help="from_name of the <Choices> block (default: the first single-choice one)")
    choose.set_defaults(func=cmd_choose_prompt)

    train = commands.add_parser(
        "train",
        help="train the project's SLM on its annotations now (what Start Training does)",
        description="Reads the project's tasks and annotations from Label Studio, trains the noisy-label SLM "
        "on the LLM's labels plus the human ones, calibrates the blend's score on the human labels, and "
        "publishes a new model version to every unlabeled task. With REDIS_URL it is queued for the workers "
        "(coalesced with a queued run); without it, or with --here, it runs here with a progress bar.",
    )
    train.add_argument("--project", required=True, type=int)
    train.add_argument("--here", action="store_true", help="run in this process even when REDIS_URL is set")
    train.add_argument("--wait", action="store_true", help="with REDIS_URL: wait for the run and print its outcome")
    train.set_defaults(func=cmd_train)

    versions = commands.add_parser("versions", help="a project's model version and its trained SLM versions")
    versions.add_argument("--project", required=True, type=int)
    versions.set_defaults(func=cmd_versions)

    rollback = commands.add_parser(
        "rollback",
        help="serve an earlier SLM version again (default: the one before the current)",
        description="Switches the project to a kept SLM version (SLM_KEEP_VERSIONS are kept) under a new "
        "model version, so Label Studio shows its predictions on every unlabeled task.",
    )
    rollback.add_argument("--project", required=True, type=int)
    rollback.add_argument("--to", help="the SLM version to serve, e.g. slm-0002 (see `versions`)")
    rollback.set_defaults(func=cmd_rollback)

    accept = commands.add_parser(
        "auto-accept",
        help="annotate the tasks both models are sure of (or --undo: remove every automatic annotation)",
        description="For every task without any annotation whose current-version prediction scores at least the "
        "threshold and where the LLM and the trained SLM agree, writes an annotation completed by the member "
        "auto-accept@ls-llm-backend.local (filter them in the Data Manager by 'Annotated by'). Never over or "
        "beside a human annotation, never used as a human label in training. The threshold: --threshold, or "
        "the lowest one at which the project's reviewed tasks reach --target-accuracy (its threshold report, "
        "GET /report?project=ID), or AUTO_ACCEPT_THRESHOLD / AUTO_ACCEPT_TARGET_ACCURACY.",
        epilog="examples:\n  python -m ml_backend.cli auto-accept --project 3 --target-accuracy 0.98\n"
        "  python -m ml_backend.cli auto-accept --project 3 --threshold 0.97\n"
        "  python -m ml_backend.cli auto-accept --project 3 --undo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    accept.add_argument("--project", required=True, type=int)
    accept.add_argument("--threshold", type=_probability, help="accept predictions scored at least this")
    accept.add_argument("--target-accuracy", type=_probability, help="choose the threshold from the report")
    accept.add_argument("--undo", action="store_true", help="delete every automatic annotation of the project")
    accept.set_defaults(func=cmd_auto_accept)

    worker = commands.add_parser("worker", help="run an rq worker for the job queue (needs REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()  # the one Settings of this process, handed to the command
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}") from None
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
