"""A trained SLM version as the server reads it: the files, and the served score (pure numpy).

`training/` writes a version; this module is what *serving* needs of it, so `ml_backend` never
imports `training`. A version is a directory `MODEL_DIR/<project>/slm/<version>/` holding

* `manifest.json` — format, kind, encoder, the target and its label names, data counts,
  metrics, and the SHA-256 of every other file;
* kind `slm-linear-head` (a `<Choices>` target): `head.npz` — the linear head (`coef`
  (n_classes, dim), `intercept` (n_classes,)) and the text clusters' `centroids` (k, dim) — and,
  in the manifest, the blend weights, the calibration map and the priority model; no pickle is
  ever loaded;
* kind `ner-examples` (a `<Labels>` target): `ner_examples.json` (the annotated texts and their
  entities) and `ner_embeddings.npy` (their encoder embeddings), from which every task gets its
  nearest annotated examples as the NER prompt's demonstrations.

The served prediction (`blend_and_score`)::

    p_blend(y | x) ∝ p_llm(y | x) ** w_llm · p_slm(y | x) ** w_slm
    score           = calibration(max_y p_blend(y | x))   = P(the pre-annotation is right)
                      (versions with a `priority` model: its P(correct) from both models, their
                      agreement and the text's cluster — `ml_backend.review_priority`)
    mislabeling     = 1 − p_blend(LLM's label | x)         = P(the LLM's own label is wrong)

`training.blend` fits the weights and the calibration map; this module only applies them, so
the benchmark and the server compute the same number with the same code.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.file_cache import ParsedFileCache
from ml_backend.review_priority import PriorityModel
from ml_backend.review_priority import features as priority_features
from ml_backend.review_priority import priority as priority_of

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "head.npz"
MANIFEST_FILE = "manifest.json"
NER_EXAMPLES_FILE = "ner_examples.json"
NER_EMBEDDINGS_FILE = "ner_embeddings.npy"
KIND_HEAD = "slm-linear-head"
KIND_NER = "ner-examples"
EPSILON = 1e-9  # probabilities are clipped here before the log of the blend
VERSION_PATTERN = re.compile(r"slm-(\d{4,9})")  # slm-0001, slm-0002, ... (sorts by number)


class ModelFormatError(RuntimeError):
    """A saved SLM is incomplete, corrupt or of an unknown format."""


# --- the served score (pure) ---------------------------------------------------------------------
@dataclass
class BlendedScores:
    """Per-task outputs; every array has length n_tasks."""

    probabilities: np.ndarray  # (n, n_classes) blended distribution
    predicted: np.ndarray  # (n,) argmax of the blend = the pre-annotation
    score: np.ndarray  # (n,) calibrated P(pre-annotation is right)
    disagreement: np.ndarray  # (n,) bool: LLM and SLM argmax differ
    llm_wrong_probability: np.ndarray  # (n,) P(the LLM's own label is wrong) = 1 − p_blend(LLM label)
    cluster: np.ndarray | None = None  # (n,) the text's cluster id (Label Studio's `prediction.cluster`)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def blend_distributions(llm_probabilities: np.ndarray, slm_probabilities: np.ndarray,
                        weights: tuple[float, float] | list[float]) -> np.ndarray:
    """p ∝ p_llm^w_llm · p_slm^w_slm, computed in log space; shape (n, n_classes)."""
    logits = (weights[0] * np.log(np.clip(llm_probabilities, EPSILON, 1.0))
              + weights[1] * np.log(np.clip(slm_probabilities, EPSILON, 1.0)))
    return softmax(logits)


def calibrate(calibration: dict[str, Any] | None, confidence: np.ndarray) -> np.ndarray:
    """Apply a stored calibration map to confidences in [0, 1].

    `{"method": "platt", "a": .., "b": ..}`: sigmoid(a · logit(c) + b);
    `{"method": "isotonic", "x": [..], "y": [..]}`: the step function, clipped at the ends;
    None or `{"method": "none"}`: the confidence itself.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    method = (calibration or {}).get("method", "none")
    if method == "platt":
        z = float(calibration["a"]) * logit(confidence) + float(calibration["b"])
        return 1.0 / (1.0 + np.exp(-z))
    if method == "isotonic":
        return np.interp(confidence, np.asarray(calibration["x"], float), np.asarray(calibration["y"], float))
    if method == "none":
        return confidence
    raise ModelFormatError(f"unknown calibration method {method!r}")


def restore_prior(corrected: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The inverse of `bias_correction.divide_out_prior` with the same prior: the distribution as
    the LLM read it (a sibling module, so the one line is here rather than imported)."""
    out = np.asarray(corrected, dtype=np.float64) * np.clip(np.asarray(prior, dtype=np.float64), 1e-12, None)[None, :]
    return out / out.sum(axis=1, keepdims=True)


def blend_and_score(llm_probabilities: np.ndarray, slm_probabilities: np.ndarray,
                    weights: tuple[float, float] | list[float], calibration: dict[str, Any] | None, *,
                    priority: PriorityModel | None = None, clusters: np.ndarray | None = None) -> BlendedScores:
    """With a `priority` model (versions since the queue issue), score = its P(correct)
    (`ml_backend.review_priority`); without, the calibrated blended top probability."""
    llm_probabilities = np.asarray(llm_probabilities, dtype=np.float64)
    slm_probabilities = np.asarray(slm_probabilities, dtype=np.float64)
    blended = blend_distributions(llm_probabilities, slm_probabilities, weights)
    llm_label = llm_probabilities.argmax(axis=1)
    score = calibrate(calibration, blended.max(axis=1))
    if priority is not None:
        x = priority_features(llm_probabilities, slm_probabilities, blended, score,
                              priority.cluster_feature(clusters, len(blended)))
        score = priority_of(priority, x)
    return BlendedScores(
        probabilities=blended,
        predicted=blended.argmax(axis=1),
        score=score,
        disagreement=llm_label != slm_probabilities.argmax(axis=1),
        llm_wrong_probability=1.0 - blended[np.arange(len(blended)), llm_label],
        cluster=None if clusters is None else np.asarray(clusters, dtype=int),
    )


def nearest_centroid(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The cluster id of each embedding (squared Euclidean distance, as k-means assigns)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    distances = (embeddings ** 2).sum(1)[:, None] - 2 * embeddings @ centroids.T + (centroids ** 2).sum(1)[None, :]
    return distances.argmin(axis=1)


# --- a saved version -------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class ServedSLM:
    """One trained version, loaded and verified."""

    version: str
    manifest: dict[str, Any]
    coef: np.ndarray
    intercept: np.ndarray
    centroids: np.ndarray | None = None  # (k, dim): the project's text clusters, when the version has them

    @property
    def target(self) -> str | None:
        return self.manifest.get("target")

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.get("label_names") or [])

    @property
    def encoder(self) -> str:
        return str(self.manifest.get("encoder") or "")

    @property
    def blend(self) -> dict[str, Any]:
        return self.manifest.get("blend") or {}

    def serves(self, from_name: str, label_names: list[str]) -> bool:
        """Whether this version was trained for this target and exactly these labels (a changed
        config makes the head meaningless: the LLM alone serves until the next training run)."""
        return self.target == from_name and self.label_names == list(label_names)

    def slm_probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(embeddings, dtype=np.float64) @ self.coef.T + self.intercept)

    @property
    def priority(self) -> PriorityModel | None:
        payload = self.manifest.get("priority")
        return PriorityModel.from_dict(payload) if payload else None

    def clusters(self, embeddings: np.ndarray) -> np.ndarray | None:
        return None if self.centroids is None or not len(self.centroids) else nearest_centroid(embeddings, self.centroids)

    def score(self, llm_probabilities: np.ndarray, embeddings: np.ndarray) -> BlendedScores:
        """`llm_probabilities` as the predictor corrects them; a version trained on the LLM's
        uncorrected read-out (`training.llm_teacher`) records the prior to put back first."""
        blend = self.blend
        if blend.get("llm_prior"):
            llm_probabilities = restore_prior(llm_probabilities, np.asarray(blend["llm_prior"], dtype=np.float64))
        return blend_and_score(llm_probabilities, self.slm_probabilities(embeddings),
                               blend.get("weights", (1.0, 1.0)), blend.get("calibration"),
                               priority=self.priority, clusters=self.clusters(embeddings))


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((Path(directory) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelFormatError(f"{directory}: unreadable manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(f"{directory}: unknown format {manifest.get('format_version') if isinstance(manifest, dict) else manifest!r}")
    return manifest


def _verified(directory: Path, manifest: dict[str, Any], name: str) -> Path:
    path = directory / name
    expected = (manifest.get("checksums") or {}).get(name)
    if not path.is_file() or sha256_file(path) != expected:
        raise ModelFormatError(f"{directory}: {name} is missing or does not match its checksum")
    return path


def load_served(directory: Path) -> ServedSLM:
    """Load a classification version, verifying the manifest's checksum of the weights."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    with np.load(_verified(directory, manifest, WEIGHTS_FILE), allow_pickle=False) as weights:
        coef, intercept = np.asarray(weights["coef"]), np.asarray(weights["intercept"])
        centroids = np.asarray(weights["centroids"]) if "centroids" in weights.files else None
    return ServedSLM(version=directory.name, manifest=manifest, coef=coef, intercept=intercept, centroids=centroids)


@dataclass(frozen=True)
class NerExamples:
    """A NER version: the project's annotated texts, their entities and embeddings."""

    version: str
    manifest: dict[str, Any]
    texts: list[str]
    entities: list[list[tuple[str, str]]]  # per text: (surface text, label result value), in text order
    embeddings: np.ndarray  # (n, dim), L2-normalised

    @property
    def target(self) -> str | None:
        return self.manifest.get("target")

    @property
    def encoder(self) -> str:
        return str(self.manifest.get("encoder") or "")

    def nearest(self, queries: np.ndarray, texts: list[str], k: int) -> list[list[int]]:
        """For each query, the indices of the `k` most similar examples (cosine), most similar
        last (closest to the task in the prompt); an example with the query's own text is skipped."""
        if len(self.texts) == 0 or k <= 0:
            return [[] for _ in texts]
        similarity = np.asarray(queries, dtype=np.float32) @ self.embeddings.T
        out = []
        for row, text in enumerate(texts):
            order = [int(i) for i in np.argsort(-similarity[row]) if self.texts[int(i)] != text][:k]
            out.append(order[::-1])
        return out


def load_ner_examples(directory: Path) -> NerExamples:
    directory = Path(directory)
    manifest = read_manifest(directory)
    try:
        examples = json.loads(_verified(directory, manifest, NER_EXAMPLES_FILE).read_text(encoding="utf-8"))
        embeddings = np.load(_verified(directory, manifest, NER_EMBEDDINGS_FILE), allow_pickle=False)
        texts = [str(e["text"]) for e in examples]
        entities = [[(str(surface), str(label)) for surface, label in e["entities"]] for e in examples]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFormatError(f"{directory}: unreadable NER examples ({error})") from error
    if embeddings.shape[0] != len(texts):
        raise ModelFormatError(f"{directory}: {len(texts)} examples but {embeddings.shape[0]} embeddings")
    return NerExamples(version=directory.name, manifest=manifest, texts=texts, entities=entities,
                       embeddings=embeddings.astype(np.float32))


def write_version(directory: Path, files: dict[str, bytes], manifest: dict[str, Any], *,
                  overwrite: bool = False) -> Path:
    """Write `files` + `manifest.json` (with their SHA-256) into `directory`, atomically.

    Everything is written and fsynced in a temporary sibling directory, then renamed into
    place: a crash at any point leaves no partial version (and the previous one serving); the
    staging directory a crashed writer left is removed by the next write (`remove_leftovers`).
    With `overwrite` an existing directory is swapped out by two renames and removed only once
    the new one is in place (a crash between the two is undone by `remove_leftovers`); without
    it an existing directory is an error."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(directory.parent)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists (pass overwrite=True to replace it)")
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f"{STAGING_PREFIX}{directory.name}-{_owner()}-"))
    try:
        checksums = {}
        for name, payload in files.items():
            _write_synced(staging / name, payload)
            checksums[name] = hashlib.sha256(payload).hexdigest()
        manifest = {**manifest, "format_version": FORMAT_VERSION, "checksums": checksums}
        _write_synced(staging / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
        _fsync_directory(staging)
        if directory.exists():
            retired = directory.parent / f"{RETIRED_PREFIX}{directory.name}-{_owner()}-{time.time_ns()}"
            os.rename(directory, retired)
            os.rename(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, directory)
        _fsync_directory(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


# --- what a crashed writer leaves behind ----------------------------------------------------------
STAGING_PREFIX = ".tmp-"  # a version being written: `.tmp-<version>-<pid>@<host>-<random>`
RETIRED_PREFIX = ".old-"  # a version being replaced: `.old-<version>-<pid>@<host>-<ns>`
DELETED_PREFIX = ".del-"  # a pruned version being removed: `.del-<version>-<pid>@<host>-<ns>`
STALE_LEFTOVER_S = 3600.0  # a leftover whose writer cannot be checked (another host) is removed after 1 h
_LEFTOVER = re.compile(r"\.(tmp|old|del)-(slm-\d{4,9})-(\d+)@(.+)-[^-]*")


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _writer_is_gone(pid: int, host: str, modified: float) -> bool:
    """Whether the process that made a leftover directory cannot still be writing it: on this
    host, it no longer runs; on another one (a shared disk), it has been quiet for an hour."""
    if host != socket.gethostname():
        return time.time() - modified > STALE_LEFTOVER_S
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return time.time() - modified > STALE_LEFTOVER_S  # the pid was reused long after its writer died


def remove_leftovers(root: Path) -> list[str]:
    """Remove the staging, retired and pruned directories of writers that died (SIGKILL, power loss),
    so they neither fill the disk nor get mistaken for versions. A retired directory whose
    version is missing (a crash between the two renames of an overwrite) is put back instead.
    Returns the names removed or restored."""
    root = Path(root)
    handled = []
    for child in root.iterdir() if root.is_dir() else ():
        match = _LEFTOVER.fullmatch(child.name)
        if not match:
            continue
        kind, version, pid, host = match.group(1), match.group(2), int(match.group(3)), match.group(4)
        try:
            gone = _writer_is_gone(pid, host, child.stat().st_mtime)
        except FileNotFoundError:
            continue
        if not gone:
            continue
        if kind == "old" and not (root / version).exists():
            os.rename(child, root / version)
        else:
            shutil.rmtree(child, ignore_errors=True)
        handled.append(child.name)
        log.warning("event=model_leftover_removed directory=%s restored=%s", child, kind == "old")
    return handled


def _fsync_directory(path: Path) -> None:
    """Make a rename durable (a crash of the machine, not only of the process)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_synced(path: Path, payload: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# --- the versions of a project ------------------------------------------------------------------------
def versions_dir(project_dir: Path) -> Path:
    return Path(project_dir) / "slm"


def list_versions(project_dir: Path) -> list[str]:
    """The version directories, oldest first, complete or not (a staging directory of a crashed
    run is not one; a version damaged on disk is, so /versions can show it: `verify_version`)."""
    root = versions_dir(project_dir)
    if not root.is_dir():
        return []
    found = [child.name for child in root.iterdir() if VERSION_PATTERN.fullmatch(child.name) and child.is_dir()]
    return sorted(found, key=version_number)


def version_number(version: str) -> int:
    match = VERSION_PATTERN.fullmatch(version)
    return int(match.group(1)) if match else -1


def verify_version(directory: Path) -> str | None:
    """None when the version is complete (a readable manifest, every file its kind needs, every
    file matching the manifest's SHA-256); otherwise what is wrong, in words."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
        required = [NER_EXAMPLES_FILE, NER_EMBEDDINGS_FILE] if manifest.get("kind") == KIND_NER else [WEIGHTS_FILE]
        for name in dict.fromkeys([*required, *(manifest.get("checksums") or {})]):
            _verified(directory, manifest, name)
    except ModelFormatError as error:
        return str(error)
    return None


def fallback_order(versions: list[str], current: str | None) -> list[str]:
    """The versions to try serving, in order: the current one, then the older ones, newest
    first. Never a newer one: after a rollback, the version rolled back from must not come back."""
    if not current:
        return []
    older = [v for v in versions if version_number(v) < version_number(current)]
    return [current, *sorted(older, key=version_number, reverse=True)]


def choose_serving_version(versions: list[str], current: str | None, errors: dict[str, str | None]) -> str | None:
    """The version that serves: the current one when it verifies (`errors[v]` is None), else the
    newest older one that does; None when none does (the LLM alone serves). A version missing
    from `errors` counts as unverified."""
    return next((v for v in fallback_order(versions, current) if v in errors and errors[v] is None), None)


def next_version(project_dir: Path) -> str:
    """The next version's name; numbers of leftovers (a version being written, replaced or put
    back by `remove_leftovers`) are never reused."""
    root = versions_dir(project_dir)
    names = [child.name for child in root.iterdir()] if root.is_dir() else []
    numbers = [version_number(name) for name in names if VERSION_PATTERN.fullmatch(name)]
    numbers += [version_number(m.group(2)) for name in names if (m := _LEFTOVER.fullmatch(name))]
    return f"slm-{max(numbers, default=0) + 1:04d}"


def prune_versions(project_dir: Path, keep: int, current: str | None) -> list[str]:
    """Remove all but the newest `keep` versions (never the current one). Returns what was removed."""
    versions = list_versions(project_dir)
    kept = set(versions[-keep:]) | ({current} if current else set())
    removed = [v for v in versions if v not in kept]
    root = versions_dir(project_dir)
    for version in removed:
        # Renamed first: a crash inside rmtree must not leave half a version under its own name.
        doomed = root / f"{DELETED_PREFIX}{version}-{_owner()}-{time.time_ns()}"
        os.rename(root / version, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return removed


def serving_manifest(project_dir: Path, version: str | None) -> dict[str, Any] | None:
    """The manifest of a project's serving version; None when there is none or it is unreadable
    (callers then treat the project as never trained)."""
    if not version:
        return None
    try:
        return read_manifest(versions_dir(project_dir) / version)
    except ModelFormatError:
        return None


def _annotations_learned(manifest_path: Path) -> int:
    manifest = read_manifest(manifest_path.parent)
    counts = manifest.get("counts") or {}
    return int(counts.get("annotations_total", counts.get("annotations", 0)))


_annotations_learned_cache: ParsedFileCache[int] = ParsedFileCache(_annotations_learned)


def trained_annotation_count(project_dir: Path, version: str | None) -> int | None:
    """How many annotations a project's serving version learned from (its manifest's counts);
    None when there is no version or its manifest is unreadable (callers: never trained).

    Every annotation webhook asks this (the count-drift rule), so the count is kept per manifest
    file while the file is unchanged (`file_cache`): one `stat` per event instead of a parse."""
    if not version:
        return None
    try:
        return _annotations_learned_cache.get(os.path.join(versions_dir(project_dir), version, MANIFEST_FILE))
    except (OSError, ModelFormatError):  # no manifest, or one that does not parse: as `serving_manifest`
        return None


def version_summary(project_dir: Path, version: str) -> dict[str, Any]:
    """What /versions and the status endpoint show of a version (its manifest, minus bulk)."""
    manifest = read_manifest(versions_dir(project_dir) / version)
    return {
        "version": version,
        "kind": manifest.get("kind"),
        "created_at": manifest.get("created_at"),
        "method": manifest.get("method"),
        "encoder": manifest.get("encoder"),
        "target": manifest.get("target"),
        "counts": manifest.get("counts", {}),
        "metrics": manifest.get("metrics", {}),
        "labels_out_of_reach": manifest.get("labels_out_of_reach", []),
        "blend": {k: v for k, v in (manifest.get("blend") or {}).items() if k != "calibration"}
        | {"calibration": ((manifest.get("blend") or {}).get("calibration") or {}).get("method", "none")},
    }
