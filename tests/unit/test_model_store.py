import os

import pytest

from ml_backend.model_store import ModelStore, ProjectState, atomic_write_text, project_id_of


@pytest.mark.parametrize(
    "raw, expected", [("6.1795457094", "6"), (6, "6"), ({"id": 12}, "12"), (None, None), ("abc", "abc")]
)
def test_project_id_of(raw, expected):
    assert project_id_of(raw) == expected


def test_state_round_trip(tmp_path):
    store = ModelStore(tmp_path)
    store.save(ProjectState(project_id="3", version_counter=4, instruction="说明"))
    assert store.load("3").version_counter == 4
    assert store.load("3").instruction == "说明"
    assert store.load("404").version_counter == 1


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old")

    def explode(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind
