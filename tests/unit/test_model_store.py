import os

import pytest

from ml_backend.model_store import (
    TRIGGERED_VERSION_KEY,
    InvalidProjectId,
    ModelStore,
    ProjectState,
    atomic_write_text,
    ls_project_id,
    project_key_of,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("6.1795457094", "6.1795457094"),  # /setup and /predict: id.creation timestamp
        (6, "6"),
        ("6", "6"),
        ({"id": 12}, "12"),
        # a webhook's project object: Label Studio's timestamp is int(created_at.timestamp())
        ({"id": 6, "created_at": "2026-11-23T18:04:54.463707Z"}, "6.1795457094"),
        (None, None),
        ("", None),
    ],
)
def test_project_key_of_label_studio_ids(raw, expected):
    assert project_key_of(raw) == expected


@pytest.mark.parametrize(
    "raw", ["abc", "None", "nan", 1e308, float("nan"), True, -1, "1" * 100_000, "<View/>", "3.", "3.4.5", [3]]
)
def test_values_that_are_not_label_studio_ids_are_rejected(raw):
    with pytest.raises(InvalidProjectId) as error:
        project_key_of(raw)
    assert len(str(error.value)) < 200  # bounded before it reaches a log line


def test_ls_project_id_of_a_key():
    assert ls_project_id("3.1795612540") == 3 and ls_project_id("3") == 3


def test_two_projects_with_the_same_number_have_separate_state(tmp_path):
    """A Label Studio reset (or a second Label Studio) reuses project numbers: state must not leak."""
    store = ModelStore(tmp_path)
    old = ProjectState(project_id="3.1000", instruction="old project")
    old.extra[TRIGGERED_VERSION_KEY] = "v-old"
    store.save(old)
    fresh = store.load("3.2000")
    assert fresh.instruction is None and TRIGGERED_VERSION_KEY not in fresh.extra
    store.save(fresh)
    assert store.resolve("3") == "3.2000"  # a bare id means the newest project of that number
    assert store.load("3.1000").instruction == "old project"


def test_state_under_a_bare_id_is_migrated_once_and_pre_annotates_again(tmp_path):
    store = ModelStore(tmp_path)
    legacy = ProjectState(project_id="3", instruction="kept", version_counter=5)
    legacy.extra[TRIGGERED_VERSION_KEY] = "v1"
    store.save(legacy)  # what earlier versions wrote: project_3/state.json
    migrated = store.load("3.1795612540")
    assert migrated.project_id == "3.1795612540"
    assert (migrated.instruction, migrated.version_counter) == ("kept", 5)
    assert TRIGGERED_VERSION_KEY not in migrated.extra  # so the next /setup starts the job again
    assert store.exists("3.1795612540") and not (tmp_path / "project_3" / "state.json").exists()
    assert store.load("3.1795612540").instruction == "kept"


def test_state_round_trip(tmp_path):
    store = ModelStore(tmp_path)
    store.save(ProjectState(project_id="3.17", version_counter=4, instruction="说明"))
    assert store.load("3.17").version_counter == 4
    assert store.load("3.17").instruction == "说明"
    assert store.load("404.1").version_counter == 1


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


def test_newest_instance_of_a_bare_id():
    from ml_backend.model_store import newest_instance

    assert newest_instance("3", ["3.100", "3.200", "4.150", "3", "33.900"]) == "3.200"
    assert newest_instance("5", ["3.100"]) is None
