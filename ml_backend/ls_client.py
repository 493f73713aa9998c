"""Label Studio's API, as the pre-annotation job uses it (label-studio-sdk 2.1.2, LS 1.23.2).

Credentials: `LABEL_STUDIO_URL` + `LABEL_STUDIO_API_KEY` when set, else the `hostname` and
`access_token` Label Studio sent with the project's `/setup` (kept in the model store; its
file is created 0600). The token may be a legacy token: `LabelStudio(base_url, api_key=token)`
sends `Authorization: Token <t>`.

Writes: `projects.import_predictions`, one request per batch (verified on 1.23.2: it stores
`result`, `score` and `model_version`, but drops `cluster`: a feature that needs `cluster` must
write through `predictions.create`, one request per prediction).
"""

from __future__ import annotations

import contextlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ml_backend.config import Settings
from ml_backend.errors import LabelStudioUnreachable
from ml_backend.model_store import ProjectState, ls_project_id

log = logging.getLogger(__name__)

TASK_FIELDS = "id,data,predictions,total_annotations,is_labeled"


UNCERTAINTY_SAMPLING = "Uncertainty sampling"
REVIEW_VIEW_TITLE = "Review queue"
REVIEW_VIEW = {  # Data Manager view data: no annotation yet, ascending prediction score
    "title": REVIEW_VIEW_TITLE,
    "filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]},
    "ordering": ["tasks:predictions_score"],
}
PATCH_CONCURRENCY = 4
PREDICTION_EXTRAS = ("cluster", "mislabeling")  # kept by Label Studio only when PATCHed (`set_prediction_extras`)


class LabelStudioUnavailable(Exception):
    """No way to reach Label Studio's API for this project (no URL or token known)."""


@dataclass
class TaskRecord:
    """A task as the job sees it: its data and which prediction versions it already has."""

    id: int
    data: dict[str, Any]
    labeled: bool
    model_versions: set[str] = field(default_factory=set)
    predictions: list[dict[str, Any]] = field(default_factory=list)  # {"id", "model_version"}
    annotations: list[dict[str, Any]] = field(default_factory=list)  # only when asked for (training)

    def as_task(self) -> dict[str, Any]:
        return {"id": self.id, "data": self.data}


@contextlib.contextmanager
def answering_for_label_studio(project_key: str) -> Iterator[None]:
    """Inside a request (not a job, which retries): a failure to use Label Studio's API becomes
    the typed 503 `LabelStudioUnreachable`, with what to check, instead of an unexplained 500."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except LabelStudioUnavailable as exc:
        raise LabelStudioUnreachable(
            str(exc), hint="Set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or reconnect the model in the project's settings."
        ) from None
    except (httpx.HTTPError, ApiError, OSError) as exc:
        status = getattr(exc, "status_code", None)
        log.warning("event=label_studio_unreachable project=%s error=%s status=%s", project_key, type(exc).__name__, status)
        raise LabelStudioUnreachable(
            f"Label Studio did not answer for project {project_key} ({type(exc).__name__}"
            + (f", HTTP {status})." if status else ")."),
            hint="Check that Label Studio is up at the URL /setup sent (or LABEL_STUDIO_URL) and that its token is valid.",
        ) from None


def describe_failure(exc: BaseException, url: str | None = None) -> str:
    """What a job records (`last_error`) when it failed: for a failure to reach Label Studio, a
    sentence that says so (where, and whether it refused, timed out or answered an error) instead
    of the bare exception; anything else as `Type: message`. One line, at most 500 characters."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    where = f"Label Studio at {url}" if url else "Label Studio"
    if isinstance(exc, httpx.TimeoutException):
        sentence = f"{where} did not answer in time ({type(exc).__name__}; LABEL_STUDIO_TIMEOUT_S)"
    elif isinstance(exc, (httpx.TransportError, ConnectionError)):
        sentence = f"{where} is unreachable ({type(exc).__name__}: {exc})"
    elif isinstance(exc, ApiError):
        sentence = f"{where} answered HTTP {exc.status_code}"
    else:
        sentence = f"{type(exc).__name__}: {exc}"
    return sentence.replace("\n", " ")[:500]


def credentials(settings: Settings, state: ProjectState) -> tuple[str, str]:
    url = settings.label_studio_url or state.label_studio_url
    token = settings.label_studio_api_key or state.label_studio_token
    if not url or not token:
        raise LabelStudioUnavailable(
            f"project {state.project_id}: no Label Studio URL/token; set LABEL_STUDIO_URL and "
            "LABEL_STUDIO_API_KEY, or connect the project so that /setup sends them"
        )
    return url.rstrip("/"), token


def remember_setup_credentials(state: ProjectState, hostname: Any, access_token: Any) -> bool:
    """Store what /setup sent (inside `ModelStore.update`); True if something changed."""
    changed = False
    for name, value in (("label_studio_url", hostname), ("label_studio_token", access_token)):
        if isinstance(value, str) and value and getattr(state, name) != value:
            setattr(state, name, value)
            changed = True
    return changed


class ProjectClient:
    """One Label Studio project through label-studio-sdk."""

    def __init__(self, url: str, token: str, project_id: int, *, timeout_s: float = 60.0) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url
        self.project_id = int(project_id)
        self.sdk = LabelStudio(base_url=url, api_key=token, timeout=timeout_s)

    @classmethod
    def for_project(cls, settings: Settings, state: ProjectState) -> "ProjectClient":
        url, token = credentials(settings, state)
        return cls(url, token, ls_project_id(state.project_id), timeout_s=settings.label_studio_timeout_s)

    def tasks(
        self, task_ids: Iterable[int] | None = None, *, page_size: int = 500, annotations: bool = False
    ) -> Iterator[TaskRecord]:
        """The project's tasks (or the selected ones), with their predictions' versions
        (and, with `annotations`, every annotation: result, was_cancelled, ground_truth, updated_at)."""
        query = None
        if task_ids is not None:
            query = json.dumps({"selectedItems": {"all": False, "included": sorted(int(t) for t in task_ids)}})
        # `include` filters nested fields too (annotations would come back as bare ids), so a
        # read with annotations asks for every field (verified on Label Studio 1.23.2).
        include = None if annotations else TASK_FIELDS
        pager = self.sdk.tasks.list(
            project=self.project_id, fields="all", include=include, page_size=page_size, query=query
        )
        for task in pager:
            raw = task.dict() if hasattr(task, "dict") else dict(task)
            predictions = [  # score and result only where the read asked for every field (annotations)
                {"id": p.get("id"), "model_version": p.get("model_version"),
                 **({"score": p.get("score"), "result": p.get("result")} if annotations else {})}
                for p in (raw.get("predictions") or [])
                if isinstance(p, dict)
            ]
            yield TaskRecord(
                id=int(raw["id"]),
                data=raw.get("data") or {},
                labeled=bool(raw.get("is_labeled")) or int(raw.get("total_annotations") or 0) > 0,
                model_versions={p["model_version"] for p in predictions if p["model_version"]},
                predictions=predictions,
                annotations=[a for a in (raw.get("annotations") or []) if isinstance(a, dict)] if annotations else [],
            )

    def write_predictions(self, predictions: list[dict[str, Any]]) -> int:
        """Store predictions (each with `task`) in one bulk request. Returns how many."""
        if not predictions:
            return 0
        response = self.sdk.projects.import_predictions(id=self.project_id, request=predictions)
        return int(getattr(response, "created", None) or len(predictions))

    def delete_predictions(self, prediction_ids: Iterable[int]) -> None:
        """Delete predictions; one already gone (404) is fine, any other error propagates.

        label-studio-sdk 2.x answers a 404 here with `core.api_error.ApiError(status_code=404)`
        (its subclass `errors.NotFoundError` elsewhere). Other statuses (401/403: a bad token,
        5xx) and transport errors (timeouts) are raised: the job fails visibly and is retried.
        """
        from label_studio_sdk.core.api_error import ApiError

        for prediction_id in prediction_ids:
            try:
                self.sdk.predictions.delete(id=int(prediction_id))
            except ApiError as exc:
                if exc.status_code != 404:
                    raise
                log.info("event=prediction_already_deleted prediction=%s", prediction_id)

    def set_prediction_extras(self, extras: dict[int, dict[str, Any]], version: str) -> int:
        """Set `cluster` / `mislabeling` on the stored predictions of `version` of these tasks
        (task id → fields). Label Studio 1.23.2 drops both from a bulk import and from /predict
        answers (verified), and uncertainty sampling reads `cluster`: so each is PATCHed."""
        if not extras:
            return 0
        patches = [(p["id"], extras[task.id]) for task in self.tasks(extras, page_size=max(10, len(extras)))
                   for p in task.predictions if p["model_version"] == version and p["id"]]

        def patch(entry: tuple[int, dict[str, Any]]) -> None:
            self.sdk.predictions.update(id=int(entry[0]), **entry[1])

        with ThreadPoolExecutor(max_workers=PATCH_CONCURRENCY) as pool:
            list(pool.map(patch, patches))
        return len(patches)

    def order_queue(self, version: str) -> None:
        """Uncertainty sampling on `version`: `/next` serves the lowest prediction score first
        (Label Studio never sets project.model_version itself)."""
        self.sdk.projects.update(id=self.project_id, model_version=version, sampling=UNCERTAINTY_SAMPLING)

    def ensure_review_view(self) -> bool:
        """The Data Manager tab "Review queue" (unlabeled tasks, lowest score first), created once;
        True if it was created now."""
        for view in self.sdk.views.list(project=self.project_id):
            data = view.data if isinstance(view.data, dict) else {}
            if data.get("title") == REVIEW_VIEW_TITLE:
                return False
        self.sdk.views.create(project=self.project_id, data=REVIEW_VIEW)
        return True

    def model_version(self) -> str | None:
        return self.sdk.projects.get(id=self.project_id).model_version or None

    def annotation_count(self) -> int | None:
        """Label Studio's `total_annotations_number` of the project (one request): what the
        reconciliation compares with the annotations the serving version learned from."""
        total = getattr(self.sdk.projects.get(id=self.project_id), "total_annotations_number", None)
        return total if isinstance(total, int) and not isinstance(total, bool) else None

    def set_model_version(self, version: str) -> None:
        """Point the project (uncertainty sampling, the labeling UI) at `version`."""
        self.sdk.projects.update(id=self.project_id, model_version=version)

    # --- auto-accept (`ml_backend.auto_accept`) --------------------------------------------------
    def ensure_user(self, email: str, *, first_name: str = "", last_name: str = "") -> int:
        """The id of the organization member with this email, created (without a password: it
        cannot log in) if missing. Auto-accepted annotations are completed by this user, so the
        Data Manager's "Annotated by" filter and exports can tell them apart."""
        for user in self.sdk.users.list():
            if (getattr(user, "email", "") or "").lower() == email.lower():
                return int(user.id)
        created = self.sdk.users.create(email=email, username=email, first_name=first_name, last_name=last_name)
        log.info("event=ls_user_created project=%s user=%s email=%s", self.project_id, created.id, email)
        return int(created.id)

    def create_annotation(self, task_id: int, result: list[dict[str, Any]], *, completed_by: int,
                          last_action: str, parent_prediction: int | None = None) -> int:
        """One annotation of a task, completed by `completed_by` (not the token's user)."""
        annotation = self.sdk.annotations.create(
            id=int(task_id), result=result, completed_by=int(completed_by), last_action=last_action,
            lead_time=0.0, ground_truth=False, was_cancelled=False,
            **({"parent_prediction": int(parent_prediction)} if parent_prediction else {}),
        )
        return int(annotation.id)

    def delete_annotation(self, annotation_id: int) -> bool:
        """Delete one annotation; False if it was already gone (404)."""
        from label_studio_sdk.core.api_error import ApiError

        try:
            self.sdk.annotations.delete(id=int(annotation_id))
        except ApiError as exc:
            if exc.status_code != 404:
                raise
            return False
        return True
