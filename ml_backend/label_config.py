"""Label Studio labeling config (XML) → a small `LabelSpec` the predictor works from.

Parsing is done by label-studio-sdk's `LabelInterface`; this module only keeps what
pre-annotation needs: which text field to read, which control to write to, the
label names (as stored in results, i.e. `alias` if set) and their definitions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface

from ml_backend.errors import UnsupportedConfig

TEXT_OBJECT_TAGS = frozenset({"Text", "HyperText"})
CLASSIFICATION_CONTROLS = frozenset({"Choices"})
SPAN_CONTROLS = frozenset({"Labels"})


@dataclass(frozen=True)
class LabelOption:
    """One Choice or Label.

    `result_value` is what Label Studio stores in a result (the `alias` if the config
    sets one, else `value`); `prompt_name` is what the LLM reads (always `value`,
    which is the human-readable name); `hint` is the label's definition, if any.
    """

    result_value: str
    prompt_name: str
    hint: str | None = None


@dataclass(frozen=True)
class Target:
    """One control tag we pre-annotate, bound to one text object.

    kind: "choices" (text classification) or "labels" (spans / NER).
    data_key: the task `data` field holding the text (`$text` → `text`).
    """

    kind: str
    from_name: str
    to_name: str
    data_key: str
    options: tuple[LabelOption, ...]
    multiple: bool = False
    object_tag: str = "Text"

    @property
    def result_values(self) -> list[str]:
        return [option.result_value for option in self.options]


@dataclass(frozen=True)
class LabelSpec:
    """Everything pre-annotation needs from a labeling config."""

    targets: tuple[Target, ...]
    config_hash: str

    @property
    def classification_targets(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.kind == "choices")

    @property
    def span_targets(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.kind == "labels")


def config_hash(label_config: str) -> str:
    """Short stable hash of the config: part of model_version, so a new config is a new version."""
    normalized = re.sub(r">\s+<", "><", label_config.strip())
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()[:8]


@lru_cache(maxsize=256)
def parse_label_config(label_config: str) -> LabelSpec:
    """Parse a labeling config; raise `UnsupportedConfig` if nothing in it can be pre-annotated.

    Cached: Label Studio sends the same config with every request.
    """
    if not isinstance(label_config, str) or not label_config.strip():
        raise UnsupportedConfig(
            "The labeling config is empty.",
            reason="Unsupported labeling config: it is empty",
            hint="Send the project's label_config (XML) with the request, or call /setup first.",
        )
    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises several lxml/own types for broken XML
        raise UnsupportedConfig(
            f"The labeling config is not valid XML: {exc}",
            reason=f"Unsupported labeling config: not valid XML ({exc})",
            hint="Check the config in Label Studio's labeling interface editor.",
        ) from exc

    targets: list[Target] = []
    for control in interface.controls:
        kind = _target_kind(control.tag)
        if kind is None:
            continue
        for obj in control.objects:
            if obj.tag not in TEXT_OBJECT_TAGS or not obj.value_is_variable:
                continue
            options = _options_of(control)
            if not options:
                continue
            targets.append(
                Target(
                    kind=kind,
                    from_name=control.name,
                    to_name=obj.name,
                    data_key=obj.value_name,
                    options=options,
                    multiple=kind == "choices" and control.attr.get("choice") == "multiple",
                    object_tag=obj.tag,
                )
            )
    if not targets:
        raise UnsupportedConfig(
            "This labeling config has no <Choices> or <Labels> bound to a <Text> or <HyperText> "
            "object with a $variable value, so there is nothing this backend can pre-annotate.",
            hint='Use e.g. <Text name="text" value="$text"/> with <Choices name="label" toName="text">'
            " (classification) or <Labels> (NER); see labeling_configs/ for ready configs.",
            reason="Unsupported labeling config: this backend needs a Choices or Labels tag bound to a Text or "
            "HyperText tag whose value is a $variable (text classification or NER); see labeling_configs/ "
            "in the backend's repository for ready configs",
        )
    return LabelSpec(targets=tuple(targets), config_hash=config_hash(label_config))


def _target_kind(control_tag: str) -> str | None:
    if control_tag in CLASSIFICATION_CONTROLS:
        return "choices"
    if control_tag in SPAN_CONTROLS:
        return "labels"
    return None


def _options_of(control) -> tuple[LabelOption, ...]:
    options = []
    for result_value, label_tag in control.labels_attrs.items():
        attrs = label_tag.attr
        prompt_name = attrs.get("value") or result_value
        hint = (attrs.get("hint") or "").strip() or None
        options.append(LabelOption(result_value=result_value, prompt_name=prompt_name, hint=hint))
    return tuple(options)
