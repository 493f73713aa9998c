"""The threshold report on examples small enough to compute by hand."""

import math

import numpy as np
import pytest

from ml_backend.report import (
    ReportInputError,
    build_report,
    coverage_curve,
    table_markdown,
    target_threshold,
    threshold_rows,
    write_report,
)

# scores 0.9, 0.8, 0.7, 0.6 → right, right, wrong, right
CONFIDENCE = np.array([0.9, 0.8, 0.7, 0.6])
CORRECT = np.array([True, True, False, True])


def test_coverage_curve_by_hand():
    scores, coverage, accuracy = coverage_curve(CONFIDENCE, CORRECT)
    assert scores.tolist() == [0.9, 0.8, 0.7, 0.6]
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert np.allclose(accuracy, [1.0, 1.0, 2 / 3, 0.75])


def test_ties_enter_together():
    scores, coverage, accuracy = coverage_curve(np.array([0.9, 0.9, 0.5]), np.array([True, False, True]))
    assert scores.tolist() == [0.9, 0.5]
    assert coverage.tolist() == [2 / 3, 1.0]
    assert np.allclose(accuracy, [0.5, 2 / 3])


def test_the_threshold_for_a_target_is_the_one_with_most_coverage():
    at_95 = target_threshold(CONFIDENCE, CORRECT, 0.95)
    assert (at_95.threshold, at_95.coverage, at_95.count, at_95.achieved) == (0.8, 0.5, 2, 1.0)
    # 75% is reached at 0.6 (all items) although 0.7 alone misses it: the most coverage wins
    at_75 = target_threshold(CONFIDENCE, CORRECT, 0.75)
    assert (at_75.threshold, at_75.coverage) == (0.6, 1.0)
    never = target_threshold(CONFIDENCE, np.zeros(4, dtype=bool), 0.95)
    assert never.threshold is None and never.coverage == 0.0


def test_table_rows_by_hand():
    rows = {row.threshold: row for row in threshold_rows(CONFIDENCE, CORRECT, thresholds=(0.0, 0.65, 0.85, 0.95))}
    assert (rows[0.0].coverage, rows[0.0].accuracy, rows[0.0].count) == (1.0, 0.75, 4)
    assert (rows[0.65].count, rows[0.65].accuracy) == (3, pytest.approx(2 / 3))
    assert (rows[0.85].count, rows[0.85].accuracy) == (1, 1.0)
    assert (rows[0.95].count, rows[0.95].accuracy) == (0, None)


def test_summary_metrics_by_hand():
    report = build_report(CONFIDENCE, CORRECT)
    assert report.accuracy == 0.75 and report.n == 4
    assert report.auroc == pytest.approx(2 / 3)  # 0.9 and 0.8 outrank the wrong 0.7, 0.6 does not
    assert report.ece == pytest.approx((0.1 + 0.2 + 0.7 + 0.4) / 4)  # one item per bin
    filled = [b for b in report.reliability if b.count]
    assert [(b.count, b.accuracy) for b in filled] == [(1, 1.0), (1, 0.0), (1, 1.0), (1, 1.0)]
    all_right = build_report([0.6, 0.7], [True, True])
    assert math.isnan(all_right.auroc)  # nothing to rank: said as n/a, not a made-up number


def test_bad_inputs_say_why():
    with pytest.raises(ReportInputError, match="no reviewed item"):
        build_report([], [])
    with pytest.raises(ReportInputError, match="between 0 and 1"):
        build_report([1.2], [True])
    with pytest.raises(ReportInputError, match="same length"):
        build_report([0.5, 0.6], [True])


def test_files_are_written(tmp_path):
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 200)
    correct = rng.uniform(size=200) < confidence
    paths = write_report(build_report(confidence, correct), tmp_path / "out", title="test")
    assert sorted(p.name for p in paths.values()) == sorted(
        ["report.html", "thresholds.csv", "thresholds.md", "reliability.png", "coverage.png"])
    for name in ("reliability.png", "coverage.png"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["report.html"].read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "<table>" in html
    header, *rows = paths["thresholds.csv"].read_text().splitlines()
    assert header == "threshold,coverage,accuracy,count" and len(rows) == len(build_report(confidence, correct).rows)
    assert "| threshold |" in table_markdown(build_report(confidence, correct))
