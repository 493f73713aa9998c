"""`lsllm` with a fake LLM and a fake encoder: files, errors, resume, train, export (milliseconds).

The same commands run with the real model, a real Label Studio and a killed process in
tests/integration/test_batch_cli_live.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ml_backend.batch import cli
from ml_backend.batch.engine import FileProject
from ml_backend.batch.files import InputFileError, read_table, table_bytes
from ml_backend.batch.labeling import checkpoint_path
from tests.conftest import KeywordRuntime
from tests.fakes import KeywordEncoder

LABELS = "positive,negative"


@pytest.fixture
def lsllm(tmp_path, monkeypatch):
    """Run the command in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("LSLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BIAS_CALIBRATION", "none")
    monkeypatch.setenv("DEMONSTRATIONS", "0")
    runtime, encoder = KeywordRuntime(), KeywordEncoder()

    def run(*argv: str, capsys=None) -> int:
        return cli.main([str(a) for a in argv], runtime_loader=lambda: runtime, encoder_loader=lambda name: encoder)

    run.runtime = runtime
    return run


def _write_csv(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _reviews(n: int) -> list[dict]:
    """Half say it with words the fake LLM reads, half with words only the SLM learns (great/awful)."""
    rows = []
    for i in range(n):
        gold = ["positive", "negative"][i % 2]
        text = f"review {i}: a {gold} experience" if i % 4 < 2 else f"review {i}: " + (
            "great great stuff" if gold == "positive" else "awful awful stuff")
        rows.append({"id": f"{i:03d}", "body": text, "gold": gold})
    return rows


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- files -----------------------------------------------------------------------------------------
def test_csv_in_gb18030_is_detected_and_xlsx_round_trips(tmp_path):
    rows = [{"评论": "房间很宽敞，布置也很好，服务员热情周到", "标签": "正面"},
            {"评论": "墙壁都开裂了，隔音很差，早餐难吃极了", "标签": "负面"}] * 5
    table = read_table(_write_csv(tmp_path / "zh.csv", rows, encoding="gb18030"))
    assert table.encoding.lower().replace("_", "") in ("gb18030", "gbk", "gb2312") and table.rows == rows
    xlsx = tmp_path / "zh.xlsx"
    xlsx.write_bytes(table_bytes(["评论", "标签", "n"], [{**r, "n": "007"} for r in rows], "xlsx"))
    back = read_table(xlsx)
    assert back.columns == ["评论", "标签", "n"] and back.rows[0]["n"] == "007"  # strings stay strings
    jsonl = tmp_path / "zh.jsonl"
    jsonl.write_bytes(table_bytes(["评论", "标签"], rows, "jsonl"))
    assert read_table(jsonl).rows == rows


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "is empty"),
    ("header_only.csv", b"text,label\n", "no data rows"),
    ("broken.xlsx", b"this is not a zip file", "not a readable Excel workbook"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', "line 2: not JSON"),
    ("notes.txt", b"hello", "unknown file type"),
])
def test_unreadable_files_get_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=message):
        read_table(path)


def test_a_wrong_encoding_says_which_to_pass(tmp_path):
    path = _write_csv(tmp_path / "zh.csv", [{"text": "房间很宽敞"}], encoding="gb18030")
    with pytest.raises(InputFileError, match="--encoding"):
        read_table(path, encoding="utf-8")


# --- label -----------------------------------------------------------------------------------------
def test_label_adds_label_and_confidence_to_the_input_columns(tmp_path, lsllm, capsys):
    source = _write_csv(tmp_path / "reviews.csv", _reviews(12))
    assert lsllm("label", source, "--text-column", "body", "--labels", LABELS, "--no-progress") == 0
    out = _read_csv(tmp_path / "reviews.labeled.csv")
    assert [row["id"] for row in out] == [f"{i:03d}" for i in range(12)]
    assert list(out[0])[:5] == ["id", "body", "gold", "label", "confidence"]
    assert all(row["label"] in ("positive", "negative") and 0.0 <= float(row["confidence"]) <= 1.0 for row in out)
    # the rows that name their sentiment are read right by the fake LLM
    assert all(row["label"] == row["gold"] for i, row in enumerate(out) if i % 4 < 2)
    assert not checkpoint_path(tmp_path / "reviews.labeled.csv").exists()
    assert "labeled 12 rows" in capsys.readouterr().out


def test_ner_entities_have_code_point_offsets(tmp_path, lsllm):
    source = tmp_path / "news.jsonl"
    source.write_text(json.dumps({"text": "😀 李明在北京工作"}, ensure_ascii=False) + "\n"
                      + json.dumps({"text": "nothing here"}) + "\n", encoding="utf-8")
    assert lsllm("label", source, "--text-column", "text", "--labels", "PER,LOC", "--ner", "--no-progress") == 0
    rows = [json.loads(line) for line in (tmp_path / "news.labeled.jsonl").read_text(encoding="utf-8").splitlines()]
    entities = json.loads(rows[0]["entities"])
    text = rows[0]["text"]
    assert {(e["label"], text[e["start"]:e["end"]]) for e in entities} == {("PER", "李明"), ("LOC", "北京")}
    assert json.loads(rows[1]["entities"]) == []


@pytest.mark.parametrize("argv, message", [
    (["--text-column", "review", "--labels", LABELS], "no column 'review'"),
    (["--text-column", "body"], "--labels a,b,c or --config"),
    (["--text-column", "body", "--config", "no_such_config"], "no config file"),
    (["--text-column", "body", "--labels", "a,a"], "twice"),
    (["--text-column", "body", "--labels", LABELS, "--hint", "neutral=meh"], "not one of --labels"),
])
def test_bad_arguments_exit_non_zero_with_one_line_and_no_output(tmp_path, lsllm, capsys, argv, message):
    source = _write_csv(tmp_path / "reviews.csv", _reviews(4))
    assert lsllm("label", source, *argv, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "reviews.labeled.csv").exists()


def test_a_wrong_encoding_is_refused_by_the_command(tmp_path, lsllm, capsys):
    source = _write_csv(tmp_path / "zh.csv", [{"body": "房间很宽敞，服务很好"}] * 3, encoding="gb18030")
    assert lsllm("label", source, "--text-column", "body", "--labels", LABELS, "--encoding", "utf-8",
                 "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert "not valid utf-8" in err and "--encoding" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "zh.labeled.csv").exists()


def test_an_unreadable_xlsx_is_refused_by_the_command(tmp_path, lsllm, capsys):
    source = tmp_path / "reviews.xlsx"
    source.write_bytes(b"PK\x03\x04 truncated")
    assert lsllm("label", source, "--text-column", "body", "--labels", LABELS, "--no-progress") == 2
    assert "not a readable Excel workbook" in capsys.readouterr().err
    assert not (tmp_path / "reviews.labeled.xlsx").exists()


def test_a_config_without_a_text_object_is_refused(tmp_path, lsllm, capsys):
    config = tmp_path / "image.xml"
    config.write_text('<View><Image name="img" value="$url"/><Choices name="c" toName="img">'
                      '<Choice value="cat"/><Choice value="dog"/></Choices></View>')
    source = _write_csv(tmp_path / "reviews.csv", _reviews(4))
    assert lsllm("label", source, "--text-column", "body", "--config", config, "--no-progress") == 2
    assert "cannot be used" in capsys.readouterr().err
    assert not (tmp_path / "reviews.labeled.csv").exists()


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, lsllm, monkeypatch, capsys):
    source = _write_csv(tmp_path / "reviews.csv", _reviews(40))
    output = tmp_path / "reviews.labeled.csv"
    calls, interrupt_at = [], [2]
    original = FileProject.predict

    def predict_then_interrupt(self, tasks):
        calls.append([t["id"] for t in tasks])
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        return original(self, tasks)

    monkeypatch.setattr(FileProject, "predict", predict_then_interrupt)
    assert lsllm("label", source, "--text-column", "body", "--labels", LABELS, "--no-progress") == 130
    assert "run the same command again" in capsys.readouterr().err
    assert not output.exists() and checkpoint_path(output).exists()
    first_chunk = calls[0]

    calls.clear()
    interrupt_at[0] = 0
    assert lsllm("label", source, "--text-column", "body", "--labels", LABELS, "--no-progress") == 0
    assert "from an earlier run" in capsys.readouterr().out
    scored_again = {task_id for chunk in calls for task_id in chunk}
    assert not scored_again & set(first_chunk)  # the finished chunk was not scored again
    rows = _read_csv(output)
    assert [row["id"] for row in rows] == [f"{i:03d}" for i in range(40)]  # every row exactly once, in order
    assert all(row["label"] for row in rows)


# --- report, train, export --------------------------------------------------------------------------
def test_report_train_and_export_round_trip(tmp_path, lsllm, capsys):
    source = _write_csv(tmp_path / "reviews.csv", _reviews(48))
    args = ["--text-column", "body", "--labels", LABELS, "--no-progress"]
    assert lsllm("label", source, *args) == 0
    labeled = tmp_path / "reviews.labeled.csv"

    assert lsllm("report", labeled, "--gold", "gold", "-o", tmp_path / "report") == 0
    assert "reviewed items" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {"report.html", "thresholds.csv", "reliability.png",
                                                                 "coverage.png"}

    assert lsllm("train", labeled, *args, "--gold-column", "gold") == 0
    assert '"status": "done"' in capsys.readouterr().out

    fresh = _write_csv(tmp_path / "more.csv", _reviews(16))
    assert lsllm("label", fresh, *args) == 0
    more = _read_csv(tmp_path / "more.labeled.csv")
    assert {"llm_label", "slm_label", "agreement", "llm_wrong_probability"} <= set(more[0])
    # the SLM learned the words the LLM cannot read: right where the LLM alone is not
    assert all(row["label"] == row["gold"] for row in more)
    assert any(row["agreement"] == "false" for row in more)

    tsv = tmp_path / "more.labeled.label-studio.json"
    assert lsllm("to-label-studio", tmp_path / "more.labeled.csv", "--text-column", "body", "--labels", LABELS) == 0
    items = json.loads(tsv.read_text(encoding="utf-8"))
    scores = [item["predictions"][0]["score"] for item in items]
    assert len(items) == 16 and scores == sorted(scores)
    first = items[0]
    assert set(first["data"]) == {"id", "body", "gold", "text"}  # the row's columns + the config's $text
    prediction = first["predictions"][0]
    assert prediction["result"][0]["value"]["choices"][0] in ("positive", "negative")
    assert isinstance(prediction["cluster"], int) and "mislabeling" in prediction
    assert prediction["model_version"] == more[0]["model_version"]


def test_train_refuses_labels_outside_the_config(tmp_path, lsllm, capsys):
    rows = _reviews(12)
    rows[3]["gold"] = "neutral"
    source = _write_csv(tmp_path / "reviews.csv", rows)
    assert lsllm("train", source, "--text-column", "body", "--labels", LABELS, "--gold-column", "gold",
                 "--no-progress") == 2
    assert "neutral" in capsys.readouterr().err


def test_export_of_an_unlabeled_file_says_to_label_it_first(tmp_path, lsllm, capsys):
    source = _write_csv(tmp_path / "reviews.csv", _reviews(4))
    assert lsllm("to-label-studio", source, "--text-column", "body", "--labels", LABELS, "--no-clusters") == 2
    assert "run `lsllm label`" in capsys.readouterr().err


def test_help_teaches_by_example():
    parser = cli.build_parser()
    for command in ("label", "report", "train", "to-label-studio"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
    assert "lsllm label" in parser.epilog and "--upload" in parser.epilog


def test_a_label_studio_projects_model_labels_a_file_without_changing_the_project(tmp_path, lsllm, monkeypatch,
                                                                                   settings, keyword_runtime):
    from ml_backend.wiring import build_services
    from tests.conftest import LABELING_CONFIGS

    store_dir = tmp_path / "server_store"
    server = build_services(settings.model_copy(update={"model_dir": store_dir}), preannotation=False,
                            runtime_loader=lambda: keyword_runtime)
    server.service.setup("7.1700000000", (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8"))
    server.round_one.run("7.1700000000", [{"id": i + 1, "data": {"text": r["body"]}} for i, r in enumerate(_reviews(12))])
    state_file = next(store_dir.rglob("state.json"))
    before = state_file.read_bytes()
    monkeypatch.setenv("MODEL_DIR", str(store_dir))
    source = _write_csv(tmp_path / "reviews.csv", _reviews(8))
    assert lsllm("label", source, "--text-column", "body", "--project", "7", "--no-progress") == 0
    rows = _read_csv(tmp_path / "reviews.labeled.csv")
    assert {row["model_version"] for row in rows} == {server.profiles.resolve("7.1700000000").version}
    assert state_file.read_bytes() == before
    assert lsllm("label", source, "--text-column", "body", "--project", "99", "--no-progress") == 2


def test_python_dash_m_ml_backend_is_the_same_command():
    import subprocess
    import sys

    answer = subprocess.run([sys.executable, "-m", "ml_backend", "label", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert answer.returncode == 0 and "--text-column" in answer.stdout and "lsllm label" in answer.stdout
