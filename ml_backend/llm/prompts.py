"""Prompts split into the parts that make label scoring cheap.

A classification prompt is cut into three strings around the task text:

    prefix       system instruction + label list + definitions + demonstrations + start of the
                 user turn. Identical for every task of a project: evaluated once, KV cache reused.
    <task text>  the only per-task tokens.
    answer_lead  end of the user turn + start of the assistant turn (chat template), shared by
                 every label, so it cancels out when label scores are normalized.
    <label>      scored token by token.
    answer_end   what closes the answer (e.g. `<|im_end|>`); its first token is scored after each
                 label so that a label that is a prefix of another ("Sci" vs "Sci/Tech") is not
                 favoured.

The cut is found by rendering the model's own chat template with sentinel strings,
so any chat model's format works without model-specific code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from jinja2.sandbox import ImmutableSandboxedEnvironment

from ml_backend.label_config import Target

TEXT_SENTINEL = "\u2063TASK_TEXT\u2063"
ANSWER_SENTINEL = "\u2063ANSWER\u2063"

DEFAULT_SINGLE_INSTRUCTION = "Classify the text into exactly one of the labels below."
DEFAULT_MULTI_INSTRUCTION = "Decide which of the labels below apply to the text."


@dataclass(frozen=True)
class Demonstration:
    """An in-context example: a text and the label(s) (prompt names) it should get."""

    text: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class ScoringPrompt:
    """The pieces of a prompt around the task text (see module docstring)."""

    prefix: str
    answer_lead: str
    answer_end: str


@dataclass(frozen=True)
class ChatFormat:
    """Renders a list of chat messages to the model's prompt text.

    `template` is a Jinja chat template (from the GGUF metadata or the HF tokenizer);
    None means a plain completion format for base models.
    """

    template: str | None
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if self.template is None:
            return _render_plain(messages, add_generation_prompt)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        return env.from_string(self.template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )


def _raise_template_error(message: str) -> None:
    raise ValueError(f"chat template error: {message}")


def _render_plain(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    parts = []
    for message in messages:
        if message["role"] == "system":
            parts.append(message["content"] + "\n\n")
        elif message["role"] == "user":
            parts.append(f"Text: {message['content']}\n")
        else:
            parts.append(f"Label: {message['content']}\n\n")
    if add_generation_prompt:
        parts.append("Label:")
    return "".join(parts)


def label_block(target: Target) -> str:
    """The label list with definitions, one per line, as the model reads it."""
    lines = []
    for option in target.options:
        line = f"- {option.prompt_name}"
        if option.hint:
            line += f": {option.hint}"
        lines.append(line)
    return "\n".join(lines)


def system_message(target: Target, instruction: str | None) -> str:
    default = DEFAULT_MULTI_INSTRUCTION if target.multiple else DEFAULT_SINGLE_INSTRUCTION
    answer_rule = (
        "For each label you are asked about, answer yes or no."
        if target.multiple
        else "Answer with the label name only."
    )
    head = instruction.strip() if instruction else default
    return f"{head}\n\nLabels:\n{label_block(target)}\n\n{answer_rule}"


def build_scoring_prompt(
    chat: ChatFormat,
    target: Target,
    *,
    instruction: str | None = None,
    demonstrations: Sequence[Demonstration] = (),
    system: str | None = None,
) -> ScoringPrompt:
    """Cut the rendered chat prompt into prefix / answer_lead / answer_end.

    `system` replaces the classification system message (NER span scoring asks other questions).
    """
    system = system if system is not None else system_message(target, instruction)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    for demo in demonstrations:
        messages.append({"role": "user", "content": demo.text})
        messages.append({"role": "assistant", "content": ", ".join(demo.labels)})
    task_messages = messages + [{"role": "user", "content": TEXT_SENTINEL}]
    rendered = chat.render(task_messages, add_generation_prompt=True)
    prefix, answer_lead = _split_once(rendered, TEXT_SENTINEL)

    answered = chat.render(
        task_messages + [{"role": "assistant", "content": ANSWER_SENTINEL}], add_generation_prompt=False
    )
    _, answer_end = _split_once(answered, ANSWER_SENTINEL)
    if chat.template is None:
        answer_lead += " "  # "Label: positive" — the label follows a space in the plain format
    return ScoringPrompt(prefix=prefix, answer_lead=answer_lead, answer_end=answer_end)


def yes_no_question(option_prompt_name: str) -> str:
    """The per-label question appended after the text for multiple-choice configs."""
    return f"\n\nDoes the label \"{option_prompt_name}\" apply to this text? Answer yes or no."


def _split_once(rendered: str, sentinel: str) -> tuple[str, str]:
    if rendered.count(sentinel) != 1:
        raise ValueError("the chat template dropped or repeated the message content; use a plain format")
    before, after = rendered.split(sentinel)
    return before, after
