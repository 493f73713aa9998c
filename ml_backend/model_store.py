"""Per-project state on disk: one typed document per project, changed only through `update`.

One JSON file per project, written atomically (temp file + fsync + os.replace), so a crash
mid-write leaves the previous state intact. Every read-modify-write goes through
`ModelStore.update(key, change)`, which holds the project's lock file (an `fcntl` lock, so
gunicorn workers and rq workers on the same disk take turns) while it re-reads the state,
applies the change and writes it. Long computations (a cold start takes minutes) happen
*outside* the lock and apply their result with a small `change`: a /setup saved meanwhile
(new instruction, new credentials) is kept, never overwritten by a stale copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

# Keys of the free-form `extra` dict that state files written before the typed fields used.
_LEGACY_EXTRA_FIELDS = {
    "preannotate_triggered_version": "triggered_version",
    "cold_start": "cold_start",
    "prompt_variant": "prompt_variant",
    "ls_hostname": "label_studio_url",
    "ls_access_token": "label_studio_token",
}


PRIVATE_FOLDER_MODE = 0o700  # project folders: their state files hold Label Studio tokens


class InvalidProjectState(ValueError):
    """A state file that does not hold a valid project state (hand-edited, or from a newer version)."""


@dataclass
class ProjectState:
    """Everything the backend remembers about one Label Studio project."""

    project_id: str  # the project key: "<id>.<created_ts>" (see `project_key_of`), or "<id>" for old state
    version_counter: int = 1
    label_config: str | None = None
    instruction: str | None = None  # from the connection's extra params ({"instruction": ...})
    cold_start: dict[str, Any] | None = None  # round one: {"basis": ..., "targets": {from_name: ...}}
    prompt_variant: dict[str, Any] | None = None  # chosen on a dev set (`prompt_choice`)
    triggered_version: str | None = None  # the last version whose pre-annotation was started
    label_studio_url: str | None = None  # /setup's hostname, when LABEL_STUDIO_URL is not set
    label_studio_token: str | None = field(default=None, repr=False)  # /setup's access_token, when LABEL_STUDIO_API_KEY is not set
    slm_version: str | None = None  # the trained small model serving this project (training loop)
    # round two: demonstrations chosen from the human labels and their last evaluation (`training.learned_demos`)
    learned_demos: dict[str, Any] | None = None
    # per-project settings from the connection's extra params (`project_settings`), e.g. {"training_auto": False}
    project_settings: dict[str, Any] = field(default_factory=dict)
    revision: int = 0  # bumped by every write: tells two copies of the state apart

    @classmethod
    def from_json(cls, data: Any, project_key: str) -> "ProjectState":
        """Validate a stored document (legacy `extra` keys are mapped to their fields)."""
        if not isinstance(data, dict):
            raise InvalidProjectState(f"project {project_key}: state is a {type(data).__name__}, not an object")
        data = dict(data)
        legacy = data.pop("extra", None) or {}
        if not isinstance(legacy, dict):
            raise InvalidProjectState(f"project {project_key}: 'extra' is not an object")
        for old, new in _LEGACY_EXTRA_FIELDS.items():
            if old in legacy and data.get(new) is None:
                data[new] = legacy[old]
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            log.warning("event=state_unknown_keys project=%s keys=%s", project_key, ",".join(unknown)[:200])
        values = {name: data[name] for name in known if name in data}
        values["project_id"] = project_key
        _check_types(values, project_key)
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "version_counter": (int,),
    "label_config": (str, type(None)),
    "instruction": (str, type(None)),
    "cold_start": (dict, type(None)),
    "prompt_variant": (dict, type(None)),
    "triggered_version": (str, type(None)),
    "label_studio_url": (str, type(None)),
    "label_studio_token": (str, type(None)),
    "slm_version": (str, type(None)),
    "learned_demos": (dict, type(None)),
    "project_settings": (dict,),
    "revision": (int,),
}


def _check_types(values: dict[str, Any], project_key: str) -> None:
    for name, value in values.items():
        allowed = _FIELD_TYPES.get(name)
        if allowed and (not isinstance(value, allowed) or isinstance(value, bool)):
            raise InvalidProjectState(
                f"project {project_key}: field {name!r} is a {type(value).__name__}, expected "
                + " or ".join(t.__name__ for t in allowed)
            )


class InvalidProjectId(ValueError):
    """A `project` value that is not a Label Studio project id."""


MAX_ID_DIGITS = 12  # Label Studio ids are database integers; creation times are unix seconds
_PROJECT_KEY = re.compile(rf"(\d{{1,{MAX_ID_DIGITS}}})(?:\.(\d{{1,{MAX_ID_DIGITS}}}))?")
DEFAULT_PROJECT = "default"
MAX_REMEMBERED_PATHS = 10_000  # store keys whose state-file path a ModelStore keeps (a few MB at most)  # requests that name no project (a bare /predict with a label_config)


def project_key_of(project: Any) -> str | None:
    """Label Studio's identity of a project as the store's key, or None when none was sent.

    Why not the bare id: after a Label Studio database reset, or with a second Label Studio on
    the same backend, another project gets the same number. Label Studio sends
    "<id>.<created_ts>" in /setup and /predict ("3.1795612540") and the whole project, with
    `created_at`, in webhooks; both give the key "3.1795612540". A bare id (an int, "3", a
    task's `project`, a CLI argument) gives "3", which `ModelStore.resolve` maps to the newest
    project of that number. Anything else (None-like strings, floats, config snippets, ids
    too long to be database ids) raises InvalidProjectId: it never becomes a file name.
    """
    if project is None or project == "":
        return None
    if isinstance(project, dict):
        return _key_of_project_object(project)
    if isinstance(project, bool) or isinstance(project, float):
        raise InvalidProjectId(f"not a Label Studio project id: {_shown(project)}")
    if isinstance(project, int):
        if project < 0 or len(str(project)) > MAX_ID_DIGITS:
            raise InvalidProjectId(f"not a Label Studio project id: {_shown(project)}")
        return str(project)
    if isinstance(project, str):
        match = _PROJECT_KEY.fullmatch(project.strip())
        if match:
            project_id, created = match.groups()
            return f"{int(project_id)}.{int(created)}" if created else str(int(project_id))
    raise InvalidProjectId(f"not a Label Studio project id: {_shown(project)}")


def is_label_studio_id(value: Any) -> bool:
    """A Label Studio database id (a task's, an annotation's): a non-negative integer of at most
    MAX_ID_DIGITS digits; JSON `true` is not 1 here, and 10**30 is client noise, not an id."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**MAX_ID_DIGITS


def _key_of_project_object(project: dict[str, Any]) -> str | None:
    """A webhook's project object: its id plus `created_at` (ISO 8601) as Label Studio's timestamp."""
    base = project_key_of(project.get("id"))
    if base is None:
        return None
    if "." in base:
        raise InvalidProjectId(f"not a Label Studio project id: {_shown(project.get('id'))}")
    created = project.get("created_at")
    if isinstance(created, str):
        try:
            created = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            return base
    if not isinstance(created, datetime):
        return base
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return f"{base}.{int(created.timestamp())}"  # Label Studio: int(project.created_at.timestamp())


def _shown(value: Any, limit: int = 40) -> str:
    """A client-supplied value, bounded before it reaches a log line or an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def ls_project_id(project_key: str) -> int:
    """The Label Studio project number of a store key ("3.1795612540" → 3)."""
    return int(project_key.split(".", 1)[0])


def newest_instance(project_id: str, keys: Iterable[str]) -> str | None:
    """Among store keys, the newest project instance of a bare id: "3" with keys "3.100",
    "3.200", "4.150" → "3.200" (the project created last under that number); None if none."""
    created = [int(key.partition(".")[2]) for key in keys if key.partition(".")[0] == project_id and "." in key]
    return f"{project_id}.{max(created)}" if created else None


def is_label_studio_project(project_key: str) -> bool:
    return project_key != DEFAULT_PROJECT


def project_id_of(project: Any) -> str | None:
    """Deprecated alias of `project_key_of` for scripts written against earlier versions."""
    return project_key_of(project)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` so readers see either the old or the new content, never a mix:
    a temporary file beside it, fsynced, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class ModelStore:
    """Reads and writes `ProjectState`s under one directory.

    Layout: `project_<id>/<created_ts>/state.json` per Label Studio project instance (the key
    "3.1795612540"); `project_<id>/state.json` is state written before keys had the creation
    time (migrated by the first load under a full key) or for a bare id never set up. Each
    state file has a `state.json.lock` beside it for `update`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()  # fcntl locks are per process: threads also take turns here
        self._paths: dict[str, Path] = {}

    def _path(self, project_key: str) -> Path:
        """Where a key's state file is (memoized: every request asks several times, and building
        a `Path` costs more than reading a small file's bytes)."""
        path = self._paths.get(project_key)
        if path is None:
            project_id, _, created = project_key.partition(".")
            folder = self.root / f"project_{re.sub(r'[^A-Za-z0-9_-]', '_', project_id)[:MAX_ID_DIGITS + 8]}"
            path = (folder / created if created else folder) / "state.json"
            if len(self._paths) >= MAX_REMEMBERED_PATHS:
                self._paths.clear()  # keys come from requests: stay bounded
            self._paths[project_key] = path
        return path

    def project_dir(self, project_key: str) -> Path:
        """The folder of a project instance's files (its state, its trained SLM versions)."""
        return self._path(self.resolve(project_key)).parent

    def resolve(self, project_key: str) -> str:
        """A bare id ("3") → the newest project instance of that number known here ("3.1795612540")."""
        if "." in project_key or not project_key.isdigit():
            return project_key
        folder = self._path(project_key).parent
        stored = (
            f"{project_key}.{child.name}"
            for child in (folder.iterdir() if folder.is_dir() else ())
            if child.name.isdigit() and (child / "state.json").is_file()
        )
        return newest_instance(project_key, stored) or project_key

    def load(self, project_key: str) -> ProjectState:
        """The project's state (a fresh one if none is stored); a bare id reads its newest instance.

        A snapshot for reading: to change the state, use `update`."""
        project_key = self.resolve(project_key)
        path = self._path(project_key)
        if not path.is_file():
            migrated = self._migrate_legacy(project_key)
            return migrated or ProjectState(project_id=project_key)
        return self._read(path, project_key)

    def stored(self, project_key: str) -> ProjectState | None:
        """The project's stored state, None when none is stored under this key: `exists` and `load`
        in one read (state written under a bare id by earlier versions is not migrated here, as
        `exists` does not see it)."""
        project_key = self.resolve(project_key)
        try:
            return self._read(self._path(project_key), project_key)
        except FileNotFoundError:
            return None

    def update(self, project_key: str, change: Callable[[ProjectState], Any]) -> ProjectState:
        """The one read-modify-write: under the project's lock, load the current state, let
        `change` modify it in place, write it (revision + 1) and return it. Keep `change` short
        and pure: compute first, then apply the result here."""
        project_key = self.resolve(project_key)
        with self._locked(project_key):
            path = self._path(project_key)
            state = self._read(path, project_key) if path.is_file() else (
                self._migrate_legacy(project_key) or ProjectState(project_id=project_key)
            )
            change(state)
            state.project_id = project_key
            state.revision += 1
            atomic_write_text(path, state.to_json())
        return state

    def exists(self, project_key: str) -> bool:
        return self._path(self.resolve(project_key)).is_file()

    def project_keys(self) -> list[str]:
        """Every project instance with a stored state ("3.1795612540"; "3" for state under a bare id)."""
        found = []
        for folder in sorted(self.root.glob("project_*")):
            project_id = folder.name.removeprefix("project_")
            if (folder / "state.json").is_file():
                found.append(project_id)
            found.extend(f"{project_id}.{child.name}" for child in sorted(folder.iterdir())
                         if child.name.isdigit() and (child / "state.json").is_file())
        return found

    @contextlib.contextmanager
    def _locked(self, project_key: str) -> Iterator[None]:
        lock_path = self._path(project_key).with_name("state.json.lock")
        self._private_folder(lock_path.parent)
        with self._lock, open(lock_path, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _private_folder(self, folder: Path) -> None:
        """Create `folder` and the project folders above it (up to the store's root) readable by
        this user only: a state file holds the Label Studio token /setup sent (the file itself is
        0600, from `tempfile.mkstemp`; `os.replace` keeps that mode). A folder an older version
        created with the umask's mode is narrowed too. The root, if it exists, is left as it is."""
        self.root.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
        below_root = folder.relative_to(self.root).parts
        current = self.root
        for part in below_root:
            current = current / part
            current.mkdir(mode=PRIVATE_FOLDER_MODE, exist_ok=True)
            if current.stat().st_mode & 0o077:
                os.chmod(current, PRIVATE_FOLDER_MODE)

    @staticmethod
    def _read(path: Path, project_key: str) -> ProjectState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InvalidProjectState(f"project {project_key}: {path} is not valid JSON ({exc})") from None
        return ProjectState.from_json(data, project_key)

    def _migrate_legacy(self, project_key: str) -> ProjectState | None:
        """State written under the bare id by earlier versions moves to the full key, once.

        Its "already pre-annotated" version is dropped, so the project's next /setup runs the
        background job again (which skips tasks that already hold the version: no duplicates).
        """
        if "." not in project_key:
            return None
        legacy = self._path(project_key.partition(".")[0])
        with self._lock:
            if not legacy.is_file():
                return None
            state = self._read(legacy, project_key)
            state.triggered_version = None
            self._private_folder(self._path(project_key).parent)
            atomic_write_text(self._path(project_key), state.to_json())
            os.replace(legacy, legacy.with_name("state.json.migrated"))
        log.info("event=state_migrated from=%s to=%s", legacy, project_key)
        return state
