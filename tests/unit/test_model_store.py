import json
import multiprocessing
import os
import threading

import pytest

from ml_backend.model_store import (
    InvalidProjectId,
    InvalidProjectState,
    ModelStore,
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


def _set(**values):
    return lambda state: [setattr(state, name, value) for name, value in values.items()]


def test_two_projects_with_the_same_number_have_separate_state(tmp_path):
    """A Label Studio reset (or a second Label Studio) reuses project numbers: state must not leak."""
    store = ModelStore(tmp_path)
    store.update("3.1000", _set(instruction="old project", triggered_version="v-old"))
    fresh = store.load("3.2000")
    assert fresh.instruction is None and fresh.triggered_version is None
    store.update("3.2000", _set(label_config="<View/>"))
    assert store.resolve("3") == "3.2000"  # a bare id means the newest project of that number
    assert store.load("3.1000").instruction == "old project"


def test_state_under_a_bare_id_is_migrated_once_and_pre_annotates_again(tmp_path):
    store = ModelStore(tmp_path)
    # what earlier versions wrote: project_3/state.json, with the free-form `extra` dict
    legacy = {"project_id": "3", "version_counter": 5, "label_config": None, "instruction": "kept",
              "extra": {"preannotate_triggered_version": "v1", "ls_hostname": "http://ls:8080",
                        "cold_start": {"basis": "b", "targets": {}}}}
    atomic_write_text(tmp_path / "project_3" / "state.json", json.dumps(legacy))
    migrated = store.load("3.1795612540")
    assert migrated.project_id == "3.1795612540"
    assert (migrated.instruction, migrated.version_counter) == ("kept", 5)
    assert migrated.label_studio_url == "http://ls:8080" and migrated.cold_start == {"basis": "b", "targets": {}}
    assert migrated.triggered_version is None  # so the next /setup starts the job again
    assert store.exists("3.1795612540") and not (tmp_path / "project_3" / "state.json").exists()
    assert store.load("3.1795612540").instruction == "kept"


def test_state_round_trip(tmp_path):
    store = ModelStore(tmp_path)
    store.update("3.17", _set(version_counter=4, instruction="说明", slm_version="slm-1"))
    assert store.load("3.17").version_counter == 4
    assert store.load("3.17").instruction == "说明"
    assert store.load("3.17").slm_version == "slm-1"
    assert store.load("404.1").version_counter == 1


def test_every_update_bumps_the_revision(tmp_path):
    store = ModelStore(tmp_path)
    assert store.load("3.17").revision == 0
    assert store.update("3.17", _set(instruction="a")).revision == 1
    assert store.update("3.17", _set(instruction="b")).revision == 2
    assert store.load("3.17").revision == 2


@pytest.mark.parametrize(
    "document, complaint",
    [
        ("[1, 2]", "not an object"),
        ('{"version_counter": "7"}', "'version_counter' is a str"),
        ('{"cold_start": [1]}', "'cold_start' is a list"),
        ('{"version_counter": true}', "'version_counter' is a bool"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_broken_state_file_is_rejected_on_load_with_the_reason(tmp_path, document, complaint):
    atomic_write_text(tmp_path / "project_3" / "17" / "state.json", document)
    with pytest.raises(InvalidProjectState, match=complaint):
        ModelStore(tmp_path).load("3.17")


def test_a_slow_read_modify_write_no_longer_overwrites_a_setup_saved_meanwhile(tmp_path):
    """Today's race (architecture issue): the cold start loaded the state, computed for minutes,
    then saved the whole document, losing a /setup's new instruction saved in between. With
    `update`, the long computation applies only its own result to the state as it is then."""
    store = ModelStore(tmp_path)
    store.update("3.17", _set(instruction="old", label_studio_token="t1"))
    computing = threading.Event()
    setup_done = threading.Event()

    def cold_start() -> None:
        snapshot = store.load("3.17")  # read, then minutes of scoring...
        computing.set()
        setup_done.wait(5)
        learned = {"basis": f"for {snapshot.instruction}", "targets": {}}
        store.update("3.17", _set(cold_start=learned))

    worker = threading.Thread(target=cold_start)
    worker.start()
    computing.wait(5)
    store.update("3.17", _set(instruction="new", label_studio_token="t2"))  # /setup meanwhile
    setup_done.set()
    worker.join(5)
    final = store.load("3.17")
    assert (final.instruction, final.label_studio_token) == ("new", "t2")
    assert final.cold_start == {"basis": "for old", "targets": {}}  # stale basis: relearned later
    assert final.revision == 3


def _increment_in_another_process(root: str, times: int) -> None:
    store = ModelStore(root)
    for _ in range(times):
        store.update("5.1", lambda state: setattr(state, "version_counter", state.version_counter + 1))


def test_updates_from_several_processes_lose_nothing(tmp_path):
    """gunicorn workers and rq workers share the store: the lock file serialises them."""
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_increment_in_another_process, args=(str(tmp_path), 25)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert ModelStore(tmp_path).load("5.1").version_counter == 1 + 3 * 25


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


def test_stored_is_the_state_or_none_and_does_not_migrate(tmp_path):
    store = ModelStore(tmp_path)
    assert store.stored("4.1795612540") is None
    store.update("4.1795612540", _set(label_config="<View/>"))
    assert store.stored("4.1795612540").label_config == "<View/>"
    assert store.stored("4").project_id == "4.1795612540"  # a bare id: the newest instance, as load
    atomic_write_text(tmp_path / "project_5" / "state.json", json.dumps({"project_id": "5", "instruction": "old"}))
    assert store.stored("5.1795612540") is None and not store.exists("5.1795612540")  # as exists: not migrated
    assert (tmp_path / "project_5" / "state.json").exists()
