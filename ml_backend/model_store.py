"""Per-project state on disk: version counter, label config, instruction, calibration.

One JSON file per project, written atomically (temp file + fsync + os.replace), so a crash
mid-write leaves the previous state intact and several processes (gunicorn workers, rq
workers) read a consistent file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ProjectState:
    project_id: str
    version_counter: int = 1
    label_config: str | None = None
    instruction: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def project_id_of(project: Any) -> str | None:
    """Label Studio sends project as "6.1795457094" (id.created_ts) in /setup and /predict, an int elsewhere."""
    if project is None:
        return None
    if isinstance(project, dict):
        project = project.get("id")
    text = str(project).strip()
    match = re.fullmatch(r"(\d+)(\.\d+)?", text)
    return match.group(1) if match else (text or None)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see either the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class ModelStore:
    """Reads and writes `ProjectState`s under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def _path(self, project_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", project_id)
        return self.root / f"project_{safe}" / "state.json"

    def load(self, project_id: str) -> ProjectState:
        path = self._path(project_id)
        if not path.is_file():
            return ProjectState(project_id=project_id)
        data = json.loads(path.read_text(encoding="utf-8"))
        return ProjectState(**data)

    def save(self, state: ProjectState) -> None:
        with self._lock:
            atomic_write_text(self._path(state.project_id), json.dumps(asdict(state), ensure_ascii=False, indent=2))

    def exists(self, project_id: str) -> bool:
        return self._path(project_id).is_file()
