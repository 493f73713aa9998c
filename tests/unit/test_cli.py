"""The command line: dev-file parsing and its error messages (no model involved)."""

import json

import pytest

from ml_backend.cli import build_parser, read_gold


def test_gold_files_in_jsonl_csv_and_label_studio_json_min(tmp_path):
    jsonl = tmp_path / "dev.jsonl"
    jsonl.write_text('{"text": "good", "label": "positive"}\n\n{"text": "bad", "label": "negative"}\n')
    assert read_gold(str(jsonl), "text", "label") == (["good", "bad"], ["positive", "negative"])

    csv_file = tmp_path / "dev.csv"
    csv_file.write_text("review,sentiment\n\"好, 很好\",positive\n", encoding="utf-8")
    assert read_gold(str(csv_file), "review", "sentiment") == (["好, 很好"], ["positive"])

    json_min = tmp_path / "export.json"  # Label Studio's JSON-MIN export of a choices project
    json_min.write_text(json.dumps([{"id": 1, "text": "ok", "sentiment": "negative"},
                                    {"id": 2, "text": "hm", "sentiment": {"choices": ["positive"]}}]))
    assert read_gold(str(json_min), "text", "sentiment") == (["ok", "hm"], ["negative", "positive"])


def test_gold_file_errors_say_how_to_fix_them(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        read_gold(str(tmp_path / "missing.jsonl"), "text", "label")
    bad = tmp_path / "dev.jsonl"
    bad.write_text('{"sentence": "good", "label": "positive"}\n')
    with pytest.raises(SystemExit, match="--text-field"):
        read_gold(str(bad), "text", "label")


def test_every_command_has_help():
    parser = build_parser()
    for command in ("preannotate", "status", "new-version", "cold-start", "choose-prompt", "worker"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
