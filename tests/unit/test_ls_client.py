"""ls_client's error handling: a prediction already gone (404) is fine, anything else is raised."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx
import pytest
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.errors.not_found_error import NotFoundError

from ml_backend.ls_client import ProjectClient


@dataclass
class StubPredictions:
    """`sdk.predictions` of a stub SDK client: `delete` answers from `errors` (prediction id → error)."""

    errors: dict[int, BaseException] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)

    def delete(self, id: int, **_):  # noqa: A002 - the SDK's parameter name
        if id in self.errors:
            raise self.errors[id]
        self.deleted.append(id)


class StubSDK:
    def __init__(self, errors: dict[int, BaseException] | None = None) -> None:
        self.predictions = StubPredictions(errors or {})


def client_with(sdk) -> ProjectClient:
    client = ProjectClient("http://label-studio.invalid", "token", 3)
    client.sdk = sdk
    return client


def test_deleting_a_prediction_that_is_already_gone_is_fine(caplog):
    sdk = StubSDK({2: ApiError(status_code=404, body={"detail": "Not found."}), 3: NotFoundError(body=None)})
    with caplog.at_level(logging.INFO, logger="ml_backend.ls_client"):
        client_with(sdk).delete_predictions([1, 2, 3, 4])
    assert sdk.predictions.deleted == [1, 4]
    assert "event=prediction_already_deleted prediction=2" in caplog.text


@pytest.mark.parametrize(
    "error",
    [
        ApiError(status_code=401, body={"detail": "Invalid token."}),
        ApiError(status_code=403, body={"detail": "You do not have permission to perform this action."}),
        ApiError(status_code=500, body="Server Error"),
        httpx.ReadTimeout("timed out"),
        httpx.ConnectError("connection refused"),
    ],
    ids=["401", "403", "500", "timeout", "refused"],
)
def test_other_errors_are_raised_not_swallowed(error):
    sdk = StubSDK({2: error})
    with pytest.raises(type(error)) as raised:
        client_with(sdk).delete_predictions([1, 2, 3])
    assert raised.value is error
    assert sdk.predictions.deleted == [1]  # stopped at the failure: the job fails and is retried


def test_the_real_sdk_raises_what_we_catch():
    """label-studio-sdk itself, on a mock transport: its 404 is ignored, its 401 is raised."""

    def label_studio(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Token good":
            return httpx.Response(401, json={"detail": "Invalid token."})
        if request.url.path == "/api/predictions/7/":
            return httpx.Response(404, json={"detail": "No Prediction matches the given query."})
        return httpx.Response(204)

    def sdk(token: str) -> LabelStudio:
        transport = httpx.MockTransport(label_studio)
        return LabelStudio(
            base_url="http://label-studio.invalid", api_key=token, httpx_client=httpx.Client(transport=transport)
        )

    client_with(sdk("good")).delete_predictions([6, 7, 8])
    with pytest.raises(ApiError) as raised:
        client_with(sdk("expired")).delete_predictions([6])
    assert raised.value.status_code == 401


def test_a_job_records_a_label_studio_failure_as_a_sentence_that_names_it():
    import httpx

    from ml_backend.ls_client import describe_failure

    url = "http://ls.example:8080"
    assert describe_failure(httpx.ReadTimeout("timed out"), url) == (
        f"Label Studio at {url} did not answer in time (ReadTimeout; LABEL_STUDIO_TIMEOUT_S)")
    assert describe_failure(httpx.ConnectError("Connection refused"), url).startswith(
        f"Label Studio at {url} is unreachable (ConnectError: Connection refused")
    assert describe_failure(ValueError("bad\nvalue")) == "ValueError: bad value"
