"""Per-project settings: a small allow-list of `Settings` a project may override through its
Label Studio connection's *Any extra params* (`{"train_min_new_annotations": 5}`).

Why an allow-list: several teams share one backend, and what differs between their projects is
*when* work starts and *what* it touches (train after 5 annotations here, only on Start Training
there; pre-annotate labeled tasks too in a review project; keep Label Studio's own task order; auto-accept
above a threshold in one project only).
Those settings are read where a project's state is at hand. Settings of the process (threads,
timeouts, Redis, the model) stay global: one model serves every project. The instruction is the
other per-project parameter; it is part of the model version (`profile`), not a setting.

/setup stores the valid overrides in the project's state (`ProjectState.project_settings`); each
consumer asks `effective(settings, state.project_settings)`. Invalid or unknown keys are ignored
with a reason (`problems`), which /setup logs: Label Studio shows the backend nothing of it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ml_backend.config import Settings

NOT_A_SETTING = frozenset({"instruction"})  # other extra params the backend reads (see `profile`)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be true or false")


def _positive_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError("must be a whole number of at least 1")


def _probability(value: Any) -> float | None:
    """A probability in (0, 1]; "" or null turns the project's auto-accept off again."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError("must be a number between 0 and 1") from None
    if isinstance(value, bool) or not 0.0 < number <= 1.0:
        raise ValueError("must be a number between 0 and 1")
    return number


def _target_accuracy(value: Any) -> float | None:
    number = _probability(value)
    if number is not None and not 0.5 < number < 1.0:
        raise ValueError("must be an accuracy between 0.5 and 1 (e.g. 0.98)")
    return number


# name → parser (raises ValueError with the rule); the names are Settings fields (README table).
ALLOWED: dict[str, Callable[[Any], Any]] = {
    "training_auto": _boolean,
    "train_min_new_annotations": _positive_int,
    "preannotate_labeled": _boolean,
    "queue_ordering": _boolean,
    "auto_accept_threshold": _probability,
    "auto_accept_target_accuracy": _target_accuracy,
}
assert set(ALLOWED) <= set(Settings.model_fields), "every per-project setting is a Settings field"


def parse(extra_params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the valid per-project settings among `extra_params`, one problem per key ignored)."""
    overrides: dict[str, Any] = {}
    problems: list[str] = []
    for raw_name, value in extra_params.items():
        name = str(raw_name)
        if name in NOT_A_SETTING:
            continue
        key = name.lower()
        parser = ALLOWED.get(key)
        if parser is None:
            problems.append(f"key={name[:40]!r} reason=unknown_key allowed={','.join(sorted(ALLOWED))}")
            continue
        try:
            overrides[key] = parser(value)
        except ValueError as exc:
            problems.append(f"key={key} reason=invalid_value value={str(value)[:40]!r} hint={str(exc).replace(' ', '_')}")
    return overrides, problems


def effective(settings: Settings, overrides: Mapping[str, Any] | None) -> Settings:
    """The process's settings with a project's overrides applied (revalidated: state files are
    hand-editable; an invalid stored value falls back to the global setting)."""
    if not overrides:
        return settings
    valid, _ = parse(overrides)
    return settings.model_copy(update=valid) if valid else settings
