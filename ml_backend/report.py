"""The threshold report: how far can the scores be trusted? (LabelFast's threshold table, done properly)

Input: for each reviewed item, the pre-annotation's confidence (the prediction's `score`, the
calibrated probability that it is right) and whether it was right (a human or gold label agrees).
Output: the threshold table (accept everything scored ≥ t: which share of the data is covered,
how accurate is that share, how many items), the lowest thresholds reaching 95% and 98% accuracy
(the most coverage at that accuracy), AUROC of score vs correctness, ECE, and two plots — the
reliability diagram (is a 0.8 right 80% of the time?) and the coverage–accuracy curve (what does
auto-accepting more cost?). The batch command line (`lsllm report`) writes it to files; the same
functions serve a project's report.

Pure numpy, except the plots (matplotlib, imported when drawn, Agg backend: no display needed).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ml_backend.metrics import auroc, expected_calibration_error

TABLE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.0, 1.0, 0.05)) + (0.97, 0.98, 0.99)
TARGET_ACCURACIES = (0.95, 0.98)
RELIABILITY_BINS = 10


class ReportInputError(ValueError):
    """The items cannot make a report (the message says why)."""


@dataclass(frozen=True)
class ThresholdRow:
    threshold: float
    coverage: float  # share of all items scored ≥ threshold
    accuracy: float | None  # accuracy among them (None when none is covered)
    count: int


@dataclass(frozen=True)
class TargetThreshold:
    """The lowest threshold whose covered items reach `accuracy` (None if no threshold does)."""

    accuracy: float
    threshold: float | None
    coverage: float
    count: int
    achieved: float | None


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class ThresholdReport:
    n: int
    accuracy: float
    auroc: float  # NaN when every item is right (or every one wrong): nothing to rank
    ece: float
    mean_confidence: float
    rows: list[ThresholdRow]
    targets: list[TargetThreshold]
    reliability: list[ReliabilityBin]
    curve: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False)  # thresholds, coverage, accuracy

    def target(self, accuracy: float) -> TargetThreshold:
        return next(t for t in self.targets if math.isclose(t.accuracy, accuracy))


def _as_arrays(confidence: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidence.ndim != 1 or confidence.shape != correct.shape:
        raise ReportInputError("confidence and correctness must be two lists of the same length")
    if len(confidence) == 0:
        raise ReportInputError("no reviewed item: the report needs items with a gold (or human) label")
    if not np.all(np.isfinite(confidence)) or confidence.min() < 0.0 or confidence.max() > 1.0:
        raise ReportInputError("confidence values must be probabilities between 0 and 1")
    return confidence, correct


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct score s (descending): accepting every item scored ≥ s covers `coverage`
    of the items at `accuracy`. Ties enter together (a threshold cannot split equal scores)."""
    order = np.argsort(-confidence, kind="stable")
    sorted_conf, sorted_correct = confidence[order], correct[order]
    right_so_far = np.cumsum(sorted_correct)
    # the last index of each run of equal scores: a threshold at that score takes the whole run
    last_of_run = np.r_[np.nonzero(np.diff(sorted_conf))[0], len(sorted_conf) - 1]
    counts = last_of_run + 1
    return sorted_conf[last_of_run], counts / len(confidence), right_so_far[last_of_run] / counts


def threshold_rows(confidence: np.ndarray, correct: np.ndarray,
                   thresholds: Sequence[float] = TABLE_THRESHOLDS) -> list[ThresholdRow]:
    rows = []
    for threshold in thresholds:
        covered = confidence >= threshold
        count = int(covered.sum())
        rows.append(ThresholdRow(threshold=float(threshold), coverage=count / len(confidence),
                                 accuracy=float(correct[covered].mean()) if count else None, count=count))
    return rows


def target_threshold(confidence: np.ndarray, correct: np.ndarray, accuracy: float) -> TargetThreshold:
    """The threshold with the most coverage whose accepted items are at least `accuracy` right."""
    scores, coverage, achieved = coverage_curve(confidence, correct)
    reaching = np.nonzero(achieved >= accuracy - 1e-12)[0]
    if len(reaching) == 0:
        return TargetThreshold(accuracy=accuracy, threshold=None, coverage=0.0, count=0, achieved=None)
    best = reaching[-1]  # lowest score still reaching it = most coverage
    return TargetThreshold(accuracy=accuracy, threshold=float(scores[best]), coverage=float(coverage[best]),
                           count=int(round(coverage[best] * len(confidence))), achieved=float(achieved[best]))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = RELIABILITY_BINS) -> list[ReliabilityBin]:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append(ReliabilityBin(lower=float(edges[b]), upper=float(edges[b + 1]), count=count,
                                   mean_confidence=float(confidence[members].mean()) if count else None,
                                   accuracy=float(correct[members].mean()) if count else None))
    return bins


def build_report(confidence: Sequence[float], correct: Sequence[bool]) -> ThresholdReport:
    confidence, correct = _as_arrays(confidence, correct)
    return ThresholdReport(
        n=len(confidence),
        accuracy=float(correct.mean()),
        auroc=auroc(confidence, correct),
        ece=expected_calibration_error(confidence, correct, n_bins=RELIABILITY_BINS),
        mean_confidence=float(confidence.mean()),
        rows=threshold_rows(confidence, correct),
        targets=[target_threshold(confidence, correct, a) for a in TARGET_ACCURACIES],
        reliability=reliability_bins(confidence, correct),
        curve=coverage_curve(confidence, correct),
    )


# --- files ---------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def write_table_csv(report: ThresholdReport, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["threshold", "coverage", "accuracy", "count"])
        for row in report.rows:
            writer.writerow([f"{row.threshold:.2f}", f"{row.coverage:.4f}",
                             "" if row.accuracy is None else f"{row.accuracy:.4f}", row.count])


def table_markdown(report: ThresholdReport) -> str:
    lines = ["| threshold | coverage | accuracy | count |", "|---:|---:|---:|---:|"]
    lines += [f"| {r.threshold:.2f} | {_pct(r.coverage)} | {_pct(r.accuracy)} | {r.count} |" for r in report.rows]
    return "\n".join(lines)


def summary_lines(report: ThresholdReport) -> list[str]:
    lines = [f"{report.n} reviewed items: accuracy {_pct(report.accuracy)}, mean confidence "
             f"{_pct(report.mean_confidence)}, ECE {_num(report.ece)}, AUROC {_num(report.auroc)}"]
    for target in report.targets:
        if target.threshold is None:
            lines.append(f"{_pct(target.accuracy)} accuracy: no threshold reaches it on these items")
        else:
            lines.append(f"{_pct(target.accuracy)} accuracy: threshold {target.threshold:.3f} accepts "
                         f"{_pct(target.coverage)} of the items ({target.count}) at {_pct(target.achieved)}")
    return lines


def _figure_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4), dpi=100)
    try:
        draw(axes)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)


def reliability_png(report: ThresholdReport) -> bytes:
    def draw(axes) -> None:
        filled = [b for b in report.reliability if b.count]
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        axes.bar([(b.lower + b.upper) / 2 for b in filled], [b.accuracy for b in filled],
                 width=1.0 / len(report.reliability) * 0.9, alpha=0.7, label="accuracy in bin")
        axes.plot([b.mean_confidence for b in filled], [b.accuracy for b in filled], "o-", color="C1",
                  label="mean confidence → accuracy")
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (score)", ylabel="accuracy",
                 title=f"Reliability (ECE {_num(report.ece)}, n={report.n})")
        axes.legend(loc="upper left", fontsize=8)

    return _figure_png(draw)


def coverage_png(report: ThresholdReport) -> bytes:
    _, coverage, accuracy = report.curve

    def draw(axes) -> None:
        axes.plot(coverage, accuracy, color="C0")
        for target, color in zip(report.targets, ("C2", "C3")):
            axes.axhline(target.accuracy, linestyle=":", color=color, label=f"{_pct(target.accuracy)} accuracy")
            if target.threshold is not None:
                axes.plot([target.coverage], [target.achieved], "o", color=color)
        axes.set(xlim=(0, 1), ylim=(max(0.0, float(np.min(accuracy)) - 0.05), 1.005), xlabel="coverage (share accepted)",
                 ylabel="accuracy of the accepted items", title=f"Coverage vs accuracy (AUROC {_num(report.auroc)})")
        axes.legend(loc="lower left", fontsize=8)

    return _figure_png(draw)


def report_html(report: ThresholdReport, *, title: str, reliability: bytes, coverage: bytes) -> str:
    def image(png: bytes, alt: str) -> str:
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'

    rows = "".join(
        f"<tr><td>{r.threshold:.2f}</td><td>{_pct(r.coverage)}</td><td>{_pct(r.accuracy)}</td><td>{r.count}</td></tr>"
        for r in report.rows
    )
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(report))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}
img{{max-width:48%;margin-right:1%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<ul>{summary}</ul>
<p>Accepting every pre-annotation scored at or above a threshold covers that share of the items at that
accuracy. The score is the calibrated probability that the pre-annotation is right: on the reliability
diagram the dots should lie on the diagonal.</p>
<p>{image(reliability, "reliability diagram")}{image(coverage, "coverage-accuracy curve")}</p>
<table><thead><tr><th>threshold</th><th>coverage</th><th>accuracy</th><th>count</th></tr></thead>
<tbody>{rows}</tbody></table>
</body></html>
"""


def write_report(report: ThresholdReport, directory: Path, *, title: str) -> dict[str, Path]:
    """report.html, thresholds.csv, thresholds.md, reliability.png and coverage.png in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    reliability, coverage = reliability_png(report), coverage_png(report)
    paths = {name: directory / name for name in
             ("report.html", "thresholds.csv", "thresholds.md", "reliability.png", "coverage.png")}
    paths["reliability.png"].write_bytes(reliability)
    paths["coverage.png"].write_bytes(coverage)
    write_table_csv(report, paths["thresholds.csv"])
    paths["thresholds.md"].write_text(table_markdown(report) + "\n", encoding="utf-8")
    paths["report.html"].write_text(report_html(report, title=title, reliability=reliability, coverage=coverage),
                                    encoding="utf-8")
    return paths
