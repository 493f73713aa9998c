"""The chat template of a model that runs in another process (an OpenAI-compatible server).

Why the backend needs it: prompts are rendered here (prefix / task / answer lead, byte-identical
across requests so the server's prefix cache reuses them), and the OpenAI API does not expose a
model's template. So it is read from a local copy of the same model: the GGUF file (the
embedded default, or the file the server loaded), a Hugging Face model directory
(`tokenizer_config.json`, what vLLM loads), or a plain Jinja file.
"""

from __future__ import annotations

import json
from pathlib import Path

from ml_backend.llm.prompts import ChatFormat


def chat_format_from(source: Path) -> ChatFormat:
    """The ChatFormat in a .gguf file, a Hugging Face directory, or a .jinja/.txt template file."""
    source = Path(source)
    if source.is_dir():
        config_path = source / "tokenizer_config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{source} has no tokenizer_config.json (set LLM_CHAT_TEMPLATE to the served model's directory)")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        template = config.get("chat_template")
        jinja = source / "chat_template.jinja"
        if template is None and jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
        return ChatFormat(template=template, bos_token=_token_text(config.get("bos_token")),
                          eos_token=_token_text(config.get("eos_token")))
    if source.suffix == ".gguf":
        return _gguf_chat_format(source)
    if source.is_file():
        return ChatFormat(template=source.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"LLM_CHAT_TEMPLATE={str(source)!r} is not a .gguf file, a model directory or a template file")


def _token_text(token: object) -> str:
    if isinstance(token, dict):  # {"content": "<s>", ...} in older tokenizer configs
        token = token.get("content")
    return token if isinstance(token, str) else ""


def _gguf_chat_format(path: Path) -> ChatFormat:
    """Template, BOS and EOS text of a GGUF, from its vocabulary only (no weights are loaded)."""
    import llama_cpp
    from llama_cpp import _internals as internals
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    try:
        def piece(token: int) -> str:
            if token < 0:
                return ""
            return model.token_to_piece(token, special=True).rstrip(b"\x00").decode("utf-8", errors="ignore")

        return ChatFormat(
            template=model.metadata().get("tokenizer.chat_template"),
            bos_token=piece(model.token_bos()),
            eos_token=piece(model.token_eos()),
        )
    finally:
        model.close()
