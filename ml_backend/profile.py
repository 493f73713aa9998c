"""A project's profile: everything one request needs about a project, resolved once.

Why one object: /predict, the background job and the webhooks all need the same chain
(stored state → parsed config → options with the instruction and the chosen prompt variant
→ the cold start's results → the model version). Computed in one place, once per request,
it cannot disagree with itself halfway through a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ml_backend.cold_start import (
    active_learned_demos,
    cold_start_basis,
    cold_start_of,
    cold_start_targets,
    stored_basis,
    with_learned_demos,
)
from ml_backend.config import Settings
from ml_backend.errors import BadRequest
from ml_backend.label_config import LabelSpec, parse_label_config
from ml_backend.model_store import (
    InvalidProjectId,
    ModelStore,
    ProjectState,
    project_key_of,
)
from ml_backend.predictor import ColdStart, PredictionOptions
from ml_backend.prompt_choice import apply_variant, stored_variant, variant_cold_start
from ml_backend.versioning import model_name, model_version


@dataclass(frozen=True)
class ProjectProfile:
    key: str  # the store key, "<id>.<created_ts>"
    state: ProjectState
    spec: LabelSpec
    options: PredictionOptions  # settings + the project's instruction + its prompt variant
    cold_start: dict[str, ColdStart]  # as the variant uses it
    version: str
    cold_start_due: bool  # round one has not run for this config/instruction yet


class Profiles:
    """Resolves profiles from the settings and the store (no model needed: /setup stays fast)."""

    def __init__(self, settings: Settings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self.model_name = model_name(settings)

    # --- identity -----------------------------------------------------------------------------
    def project_key(self, project: Any, *, default: str | None = None) -> str | None:
        """The store key of a request's `project` (see `model_store.project_key_of`); a bare id
        maps to the newest project of that number. Not a Label Studio id → 400."""
        try:
            key = project_key_of(project)
        except InvalidProjectId as exc:
            raise BadRequest(
                str(exc), hint='Label Studio sends its project id ("3" or "3.1795612540", id.creation time).'
            ) from None
        return self.store.resolve(key) if key is not None else default

    # --- the chain, piece by piece (each pure given the state) ------------------------------
    def instruction(self, state: ProjectState) -> str | None:
        return state.instruction or self.settings.resolved_instruction()

    def base_options(self, state: ProjectState) -> PredictionOptions:
        """The settings with the project's instruction, before any prompt variant."""
        return PredictionOptions(
            scoring_mode=self.settings.scoring_mode,
            bias_calibration=self.settings.bias_calibration,
            max_text_tokens=self.settings.max_text_tokens,
            instruction=self.instruction(state),
            batch_size=self.settings.llm_batch_size,
            ner_max_new_tokens=self.settings.ner_max_new_tokens,
            offset_unit=self.settings.label_studio_offsets,
        )

    def options(self, state: ProjectState) -> PredictionOptions:
        return apply_variant(self.base_options(state), stored_variant(state))

    def cold_start_basis(self, state: ProjectState, spec: LabelSpec) -> str:
        return cold_start_basis(spec, self.instruction(state), self.settings.demonstrations)

    def current_cold_start(self, state: ProjectState, spec: LabelSpec) -> dict[str, Any]:
        """The stored round-one results if they were learned for this config and instruction."""
        stored = state.cold_start or {}
        return stored if stored.get("basis") == self.cold_start_basis(state, spec) else {}

    def learned_demos(self, state: ProjectState, spec: LabelSpec) -> dict[str, Any] | None:
        """Round two's demonstrations, when adopted for this config and instruction. A prompt
        variant chosen on a dev set (`cli choose-prompt`) wins: it was chosen for the cold start's prompt."""
        if stored_variant(state) is not None:
            return None
        return active_learned_demos(state, self.cold_start_basis(state, spec))

    def learned_demos_record(self, state: ProjectState, spec: LabelSpec) -> dict[str, Any] | None:
        """The serving round-two prompt with its basis, as a trained version records it (None: the
        cold start's prompt serves)."""
        active = self.learned_demos(state, spec)
        return None if active is None else {"basis": self.cold_start_basis(state, spec), **active}

    def needs_cold_start(self, state: ProjectState, spec: LabelSpec) -> bool:
        """True when the cold start would change predictions and has not run for this config."""
        wanted = self.settings.demonstrations > 0 or self.settings.bias_calibration == "prior_matching"
        return wanted and bool(cold_start_targets(spec)) and stored_basis(state) != self.cold_start_basis(state, spec)

    def prompt_fingerprint(self, state: ProjectState, spec: LabelSpec) -> dict[str, Any]:
        """What the cold start and round two put in the prompt (part of the model version)."""
        current = self.current_cold_start(state, spec)
        learned = self.learned_demos(state, spec)
        return current if learned is None else {**current, "learned_demos": learned}

    def version(self, state: ProjectState, spec: LabelSpec) -> str:
        return model_version(
            self.model_name,
            spec,
            self.options(state),
            cold_start=self.prompt_fingerprint(state, spec),
            variant=stored_variant(state),
            counter=state.version_counter,
        )

    # --- all at once ------------------------------------------------------------------------
    def of_state(self, state: ProjectState, spec: LabelSpec | None = None) -> ProjectProfile:
        if spec is None:
            if not state.label_config:
                raise BadRequest(
                    f"No labeling config for project {state.project_id}.",
                    hint="Connect the project in Label Studio (it calls /setup), or send label_config.",
                )
            spec = parse_label_config(state.label_config)
        learned = cold_start_of(state, self.cold_start_basis(state, spec))
        return ProjectProfile(
            key=state.project_id,
            state=state,
            spec=spec,
            options=self.options(state),
            cold_start=with_learned_demos(variant_cold_start(learned, stored_variant(state)),
                                          self.learned_demos(state, spec)),
            version=self.version(state, spec),
            cold_start_due=self.needs_cold_start(state, spec),
        )

    def resolve(self, project_key: str, label_config: str | None = None) -> ProjectProfile:
        """The profile of a stored project; `label_config` (sent with /predict) wins over the stored one."""
        state = self.store.load(project_key)
        config = label_config or state.label_config
        if not config:
            raise BadRequest(
                "No labeling config for this project.",
                hint="Send label_config with /predict, or connect the project so Label Studio calls /setup.",
            )
        return self.of_state(state, parse_label_config(config))
