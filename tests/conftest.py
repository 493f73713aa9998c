"""Shared fixtures: paths to the repo's recorded payloads and to ../shared, a keyword-driven fake
LLM runtime for unit tests, apps."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ml_backend.llm.base import LLMRuntime, cut_at_stop
from ml_backend.llm.prompts import ChatFormat

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SHARED_DIR", REPO_ROOT / ".." / "shared")).resolve()
LABELING_CONFIGS = REPO_ROOT / "labeling_configs"
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"  # small recorded payloads, kept in the repo
LABEL_STUDIO_VERSION = "1.23.2"  # the Label Studio the payloads under FIXTURES_DIR were recorded from

QWEN_LIKE_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def fixture_path(*parts: str) -> Path:
    """A file under tests/fixtures/; it ships with the repo, so a missing one is an error, never a skip."""
    path = FIXTURES_DIR.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: tests/fixtures/ is part of the repository")
    return path


def ls_payload(name: str) -> dict:
    """The JSON body of a request Label Studio 1.23.2 sent to a backend, as recorded
    (tests/fixtures/label-studio-1.23.2/<name>, e.g. "setup_1.json")."""
    recorded = json.loads(fixture_path(f"label-studio-{LABEL_STUDIO_VERSION}", name).read_text(encoding="utf-8"))
    return recorded["body"]


def shared_path(*parts: str) -> Path:
    """A path under ../shared (datasets); skip the test if it is absent, except under CI where that is a failure."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI must run with ../shared beside the checkout")
        pytest.skip(f"{path} not found (set SHARED_DIR to the shared folder)")
    return path


def load_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


class KeywordRuntime(LLMRuntime):
    """A fake LLM for unit tests: tokens are code points; a continuation's log-probability is
    higher the more often its last word occurs in the task text. Deterministic and instant."""

    name = "keyword-fake"

    # What the fake "generates" for NER: every one of these surface forms found in the task text.
    DEFAULT_ENTITIES = {"李明": "PER", "北京": "LOC", "Paris": "LOC", "Obama": "PER"}

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.entities: dict[str, str] = dict(self.DEFAULT_ENTITIES)

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return [ord(ch) for ch in text]

    def detokenize(self, tokens) -> str:
        return "".join(chr(t) for t in tokens)

    def prefix_tokens(self, prefix: str) -> list[int]:
        return [ord(ch) for ch in prefix]

    @property
    def chat_format(self) -> ChatFormat:
        return ChatFormat(template=QWEN_LIKE_TEMPLATE)

    def generate(self, prefix, task, suffix, *, max_tokens, stop=()) -> str:
        """The NER answer after the pre-filled `[`: known entities in the task text, in text order."""
        text = "".join(chr(t) for t in task)
        found = sorted((text.find(surface), surface) for surface in self.entities if surface in text)
        pairs = [json.dumps([surface, self.entities[surface]], ensure_ascii=False) for _, surface in found]
        return cut_at_stop((", ".join(pairs) + "]]") if pairs else "]", stop)[0]

    def score_continuations(self, prefix, tasks, continuations, *, progress=None) -> np.ndarray:
        self.calls.append({"n_tasks": len(tasks), "n_continuations": len(continuations)})
        scores = np.zeros((len(tasks), len(continuations)))
        for i, task in enumerate(tasks):
            text = "".join(chr(t) for t in task).lower()
            for j, cont in enumerate(continuations):
                words = re.findall(r"\w+", "".join(chr(t) for t in cont).replace("<|im_end|>", " "))
                word = words[-1].lower() if words else ""
                scores[i, j] = -2.0 + 1.5 * text.count(word) if word else -5.0
            if progress:
                progress(1)
        return scores


@pytest.fixture
def keyword_runtime() -> KeywordRuntime:
    return KeywordRuntime()


@pytest.fixture
def settings(tmp_path):
    from ml_backend.config import Settings

    # No background pre-annotation from /setup here: the recorded payloads name a Label Studio
    # that unit tests must not call (tests/unit/test_preannotate.py turns it on where it is the subject).
    return Settings(
        model_dir=tmp_path / "store", bias_calibration="none", cache_dir=tmp_path / "cache", preannotate_auto=False,
        redis_url=None, train_debounce_s=0,
    )


@pytest.fixture
def app(settings, keyword_runtime):
    from ml_backend.app import create_app

    return create_app(settings, runtime_loader=lambda: keyword_runtime)


@pytest.fixture
def client(app):
    return app.test_client()


# --- no silent skips for newcomers (issue 13) ---------------------------------------------------------
SYSTEM_DEPS_HINT = "sudo make system-deps"  # the apt list .ci/run installs (scripts/install.sh)
REAL_SERVICE_WORDS = ("redis", "chromium", "playwright", "label studio", ".venv-ls", "label-studio")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Outside CI a missing real service skips its tests (under CI it fails them): say so in one
    line at the end, with the command that installs what is missing, so a green run on a newcomer's
    machine is never mistaken for a full one."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = []
    for report in skipped:
        longrepr = getattr(report, "longrepr", None)
        reason = str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr or "")
        if any(word in reason.lower() for word in REAL_SERVICE_WORDS):
            reasons.append(reason.removeprefix("Skipped: "))
    if reasons:
        missing = "; ".join(sorted(set(reasons)))[:300]
        terminalreporter.write_line(
            f"SKIPPED {len(reasons)} real-service test(s): {missing} -> install with `{SYSTEM_DEPS_HINT}` "
            "(and `make label-studio`), then run `make test` again", yellow=True, bold=True)


# --- real services shared by tests/integration and tests/reliability ---------------------------------
# Defined here, in the one conftest above both folders, so a session starts one Label Studio (a fixture
# imported into two modules would be two fixtures, each starting its own).


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    return Path(os.environ.get("CACHE_DIR", Path.home() / ".cache" / "ls-llm-backend"))


@pytest.fixture(scope="session")
def default_model_path(model_cache_dir) -> Path:
    from tests.integration.conftest import require
    from ml_backend.llm.default_model import DefaultModelMissing, ensure_default_model

    try:
        return ensure_default_model(model_cache_dir)
    except DefaultModelMissing as exc:
        require(False, str(exc))


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio 1.23.2 on SQLite, started from the .venv-ls that `make test` installs."""
    import subprocess

    import requests

    from scripts import stack
    from tests.integration.conftest import LS_PASSWORD, LS_TOKEN, LS_USER, free_port, require, stop, wait_until

    external = os.environ.get("LABEL_STUDIO_TEST_URL")
    if external:
        yield external
        return
    binary = stack.label_studio_binary()
    require(binary.exists(), f"{binary} missing: run `make label-studio` (make test does), or set LS_VENV")
    port = free_port()
    data_dir = tmp_path_factory.mktemp("ls-data")
    # What `scripts/stack` runs: SQLite in data_dir, a fixed legacy token, the SSRF guard lifted.
    env = stack.label_studio_env(os.environ, data_dir, token=LS_TOKEN, user=LS_USER, password=LS_PASSWORD)
    log_path = data_dir / "label-studio.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            stack.label_studio_argv(binary, port),
            cwd=data_dir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/health", timeout=2).status_code == 200,
            timeout=400,
            what="Label Studio",
            process=process,
        )
        yield url
    except Exception:
        print(log_path.read_text(errors="replace")[-5000:])
        raise
    finally:
        stop(process)


@pytest.fixture(scope="session")
def ls_client(label_studio):
    from label_studio_sdk import LabelStudio

    from tests.integration.conftest import LS_TOKEN

    # Generous: "Retrieve predictions" blocks until Label Studio has our /predict answer (up to 100 s).
    return LabelStudio(base_url=label_studio, api_key=LS_TOKEN, timeout=300)
