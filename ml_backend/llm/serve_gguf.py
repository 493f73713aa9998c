"""`python -m ml_backend.llm.serve_gguf [flags of python -m llama_cpp.server]`: llama-cpp-python's
OpenAI-compatible server with llama.cpp's plain CPU weight layout.

Why not `python -m llama_cpp.server` itself: it loads models with llama.cpp's repacked CPU layouts
("extra buffer types"), and on a CPU with AMX (this project's build machine, a recent Xeon) their
kernels crash the server (a general protection fault in libggml-cpu) on the first prompt longer than
one token; `/v1/models` still answers, so it looks healthy until the first request. The in-process
runtime has used the plain layout since it was measured to give batch-independent scores at no cost
(`llama_cpp_runtime.py`), so with it the server also computes the same numbers as the in-process
runtime. llama-cpp-python's server has no flag for it (llama.cpp's own `llama-server` has
`--no-repack`): this wrapper sets it and hands over to the server's own `main()`, every flag unchanged.

It also drops `PORT` and `HOST` from the environment when `--port` / `--host` are given: the server
prefers those variables over its flags, and next to the backend they hold the backend's own port.
"""

from __future__ import annotations

import os
import sys

from ml_backend.llm.llama_cpp_runtime import plain_cpu_layout


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for flag, variable in (("--port", "PORT"), ("--host", "HOST")):
        if flag in argv:
            os.environ.pop(variable, None)
    from llama_cpp.server.__main__ import main as serve

    sys.argv = ["python -m ml_backend.llm.serve_gguf", *argv]
    with plain_cpu_layout():
        serve()


if __name__ == "__main__":
    main()
