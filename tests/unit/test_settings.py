"""Configuration: one Settings class for the server, gunicorn and the CLI; errors name the variable."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from ml_backend.config import Settings, SettingsError, load_settings
from tests.conftest import LABELING_CONFIGS, REPO_ROOT

GUNICORN_CONF = REPO_ROOT / "ml_backend" / "gunicorn_conf.py"
GUNICORN_VARIABLES = ("HOST", "PORT", "WORKERS", "THREADS", "WORKER_TIMEOUT", "LOG_LEVEL", "REDIS_URL")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No gunicorn variable from the machine running the tests. gunicorn_conf exports
    PROMETHEUS_MULTIPROC_DIR: set here, so monkeypatch puts the test process's value back."""
    for name in GUNICORN_VARIABLES + ("INSTRUCTION", "INSTRUCTION_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prometheus"))
    return monkeypatch


def test_gunicorn_defaults_are_the_documented_ones(clean_env):
    settings = Settings()
    assert (settings.host, settings.port, settings.workers, settings.threads, settings.worker_timeout) == (
        "0.0.0.0", 9090, 1, 4, 180,
    )
    assert settings.log_level == "INFO" and settings.redis_url is None
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert conf["bind"] == "0.0.0.0:9090"
    assert (conf["workers"], conf["threads"], conf["timeout"], conf["loglevel"]) == (1, 4, 180, "info")
    assert conf["worker_class"] == "gthread"


def test_settings_read_the_gunicorn_variables(clean_env, capsys):
    for name, value in {
        "HOST": "127.0.0.1", "PORT": "9191", "WORKERS": "2", "THREADS": "8", "WORKER_TIMEOUT": "300",
        "LOG_LEVEL": "DEBUG", "REDIS_URL": "redis://localhost:6379/0",
    }.items():
        clean_env.setenv(name, value)
    settings = Settings()
    assert (settings.host, settings.port, settings.workers, settings.threads, settings.worker_timeout) == (
        "127.0.0.1", 9191, 2, 8, 300,
    )
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert conf["bind"] == "127.0.0.1:9191"
    assert (conf["workers"], conf["threads"], conf["timeout"], conf["loglevel"]) == (2, 8, 300, "debug")
    assert "warning" not in capsys.readouterr().out  # WORKERS > 1 is fine with Redis


def test_several_workers_without_redis_warn(clean_env, capsys):
    clean_env.setenv("WORKERS", "3")
    assert runpy.run_path(str(GUNICORN_CONF))["workers"] == 3
    assert "WORKERS > 1 without REDIS_URL" in capsys.readouterr().out


@pytest.mark.parametrize(
    "value, reason",
    [("0", "greater than or equal to 1"), ("two", "valid integer"), ("", "valid integer")],
)
def test_a_bad_workers_value_is_rejected_by_name(clean_env, value, reason):
    clean_env.setenv("WORKERS", value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert f"WORKERS={value!r}" in message and reason in message
    # gunicorn stops before binding, with the same message.
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(GUNICORN_CONF))
    assert "WORKERS" in str(exit_info.value.code) and reason in str(exit_info.value.code)


def test_every_wrong_variable_is_named(clean_env):
    clean_env.setenv("PORT", "70000")
    clean_env.setenv("THREADS", "0")
    clean_env.setenv("WORKER_TIMEOUT", "soon")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "PORT=" in message and "THREADS=" in message and "WORKER_TIMEOUT=" in message


def test_cli_reports_bad_settings_once_with_the_variable_name(clean_env):
    from ml_backend.cli import main

    clean_env.setenv("WORKERS", "0")
    with pytest.raises(SystemExit) as exit_info:
        main(["status"])
    assert "WORKERS='0'" in str(exit_info.value.code)


def test_cli_builds_settings_once_and_hands_them_to_the_command(clean_env, monkeypatch):
    import ml_backend.cli as cli

    built = []

    def counting_load_settings(**overrides):
        built.append(overrides)
        return Settings(**overrides)

    seen = []
    monkeypatch.setattr(cli, "load_settings", counting_load_settings)
    monkeypatch.setattr(cli, "cmd_status", lambda args, settings: seen.append(settings) or 0)
    assert cli.main(["status"]) == 0
    assert len(built) == 1 and len(seen) == 1 and isinstance(seen[0], Settings)


# --- INSTRUCTION_FILE: read once, when the settings are built ------------------------------------------
@pytest.fixture
def count_reads(monkeypatch):
    """How often each file was read with Path.read_text."""
    reads: dict[Path, int] = {}
    original = Path.read_text

    def counting_read_text(self, *args, **kwargs):
        reads[Path(self)] = reads.get(Path(self), 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting_read_text)
    return reads


def test_instruction_file_is_read_once(tmp_path, count_reads):
    file = tmp_path / "instruction.txt"
    file.write_text("  Label the main topic.\n", encoding="utf-8")
    settings = Settings(instruction="ignored: the file wins", instruction_file=file)
    assert count_reads[file] == 1
    for _ in range(5):
        assert settings.resolved_instruction() == "Label the main topic."
    file.write_text("edited later", encoding="utf-8")
    assert settings.resolved_instruction() == "Label the main topic."  # read at start-up, as documented
    assert count_reads[file] == 1
    # A copy with other settings reuses the text; a copy naming another file reads that one once.
    assert settings.model_copy(update={"threads": 2}).resolved_instruction() == "Label the main topic."
    other = tmp_path / "other.txt"
    other.write_text("Other.", encoding="utf-8")
    copy = settings.model_copy(update={"instruction_file": other})
    assert copy.resolved_instruction() == copy.resolved_instruction() == "Other."
    assert count_reads[file] == 1 and count_reads[other] == 1


def test_instruction_file_is_not_read_again_per_request(tmp_path, keyword_runtime, count_reads):
    from ml_backend.app import create_app

    file = tmp_path / "instruction.txt"
    file.write_text("Decide whether the review is positive.", encoding="utf-8")
    settings = Settings(
        model_dir=tmp_path / "store", cache_dir=tmp_path / "cache", bias_calibration="none",
        preannotate_auto=False, redis_url=None, instruction_file=file,
    )
    client = create_app(settings, runtime_loader=lambda: keyword_runtime).test_client()
    config = (LABELING_CONFIGS / "sentiment_en.xml").read_text()
    assert client.post("/setup", json={"project": "4.1", "schema": config}).status_code == 200
    for _ in range(3):
        response = client.post(
            "/predict", json={"tasks": [{"id": 1, "data": {"text": "great"}}], "label_config": config, "project": "4.1"}
        )
        assert response.status_code == 200
    assert count_reads[file] == 1


def test_instruction_instead_of_a_file(clean_env):
    assert Settings(instruction="Be brief.").resolved_instruction() == "Be brief."
    assert Settings().resolved_instruction() is None


def test_empty_instruction_file_means_no_instruction(tmp_path):
    file = tmp_path / "empty.txt"
    file.write_text(" \n", encoding="utf-8")
    assert Settings(instruction_file=file).resolved_instruction() is None


def test_a_missing_or_unreadable_instruction_file_stops_start_up(tmp_path, clean_env):
    clean_env.setenv("INSTRUCTION_FILE", str(tmp_path / "missing.txt"))
    with pytest.raises(SettingsError, match=r"INSTRUCTION_FILE='.*missing\.txt' cannot be read: No such file"):
        load_settings()
    clean_env.setenv("INSTRUCTION_FILE", str(tmp_path))
    with pytest.raises(SettingsError, match="INSTRUCTION_FILE=.* cannot be read"):
        load_settings()
    binary = tmp_path / "instruction.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    clean_env.setenv("INSTRUCTION_FILE", str(binary))
    with pytest.raises(SettingsError, match="INSTRUCTION_FILE=.* cannot be read"):
        load_settings()


def test_every_setting_has_a_row_in_the_readme_table():
    import re

    table = [line for line in (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", "\n".join(table)))
    assert sorted(name.upper() for name in Settings.model_fields if name.upper() not in documented) == []
