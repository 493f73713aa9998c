"""Hand-written bad input, one row per kind the reliability issue lists, against a real Flask app.

Every row must get a 4xx whose JSON body says what is wrong and how to fix it (`error`, `hint`),
never a 5xx, and the app must still be healthy afterwards. Inputs that are odd but valid (emoji,
CJK, right-to-left and control characters in texts; unknown webhook actions) must be answered
normally: one prediction per task, an "ignored" webhook.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import LABELING_CONFIGS

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
LONG = "9" * 100_000  # the 100,000-character project value, all digits (looks like an id)
LONG_TEXT = "x" * 100_000
DEEP = 20_000  # nesting depth: far past Python's recursion limit (1,000), under the test limit


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: Any = None  # JSON-encoded unless `raw` is given
    raw: bytes | None = None
    content_type: str = "application/json"
    expected: int = 400

    def send(self, client):
        data = self.raw if self.raw is not None else (json.dumps(self.body) if self.body is not None else None)
        return client.open(self.path, method=self.method, data=data, content_type=self.content_type)


def deep_list(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_object(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


POST_PATHS = ("/setup", "/predict", "/webhook", "/preannotate", "/queue/refresh")
PROJECT_QUERY_PATHS = ("/versions", "/report", "/preannotate/status")
BAD_PROJECT_IDS = {
    "100k_digits": LONG,
    "100k_chars": LONG_TEXT,
    "path_traversal": "../../etc/passwd",
    "negative": -1,
    "float": 3.5,
    "bool": True,
    "list": [3],
    "nan_text": "NaN",
    "exponent": "1e5",
    "bad_timestamp": "3.abc",
    "nul_byte": "3\x00",
}

CASES = [
    # malformed JSON, non-object bodies, wrong content types, invalid UTF-8
    *[Case(f"malformed_json{p}", "POST", p, raw=b'{"tasks": [') for p in POST_PATHS],
    *[Case(f"not_an_object{p}", "POST", p, body=[1, 2]) for p in POST_PATHS],
    *[Case(f"null_body{p}", "POST", p, raw=b"null") for p in POST_PATHS],
    *[Case(f"empty_body{p}", "POST", p, raw=b"") for p in POST_PATHS],
    *[Case(f"text_plain{p}", "POST", p, raw=b'{"action": "X"}', content_type="text/plain") for p in POST_PATHS],
    *[Case(f"invalid_utf8{p}", "POST", p, raw=b'{"schema": "\xff\xfe\xc3\x28", "tasks": []}') for p in POST_PATHS],
    *[Case(f"lone_surrogate{p}", "POST", p, raw=b'{"project": "\\ud800", "schema": "\\udfff"}') for p in POST_PATHS],
    # deep nesting (a recursive parser must not turn it into a crash)
    *[Case(f"deep_list{p}", "POST", p, raw=deep_list(DEEP)) for p in POST_PATHS],
    *[Case(f"deep_object{p}", "POST", p, raw=deep_object(DEEP // 2)) for p in POST_PATHS],
    Case("deep_task_data", "POST", "/predict",
         raw=b'{"label_config": "x", "tasks": [{"data": ' + deep_object(DEEP // 2) + b"}]}"),
    Case("int_of_5000_digits", "POST", "/setup", raw=b'{"schema": "<View/>", "project": ' + b"7" * 5000 + b"}"),
    # missing keys
    Case("setup_without_schema", "POST", "/setup", body={"project": "3.1795457094"}),
    Case("predict_without_tasks", "POST", "/predict", body={"label_config": SENTIMENT_EN}),
    Case("webhook_without_action", "POST", "/webhook", body={"project": {"id": 3}}),
    Case("preannotate_without_project", "POST", "/preannotate", body={"tasks": [1]}),
    Case("queue_refresh_without_project", "POST", "/queue/refresh", body={}),
    Case("report_without_project", "GET", "/report"),
    # wrong types
    Case("schema_not_a_string", "POST", "/setup", body={"project": "3.1", "schema": 42}),
    Case("tasks_a_string", "POST", "/predict", body={"tasks": "all", "label_config": SENTIMENT_EN}),
    Case("tasks_of_numbers", "POST", "/predict", body={"tasks": [1, 2], "label_config": SENTIMENT_EN}),
    Case("label_config_a_list", "POST", "/predict", body={"tasks": [{"data": {"text": "a"}}], "label_config": ["<View/>"]}),
    # one odd task must not cost the batch (Label Studio drops all of it on a 4xx): an empty prediction
    Case("task_data_a_string", "POST", "/predict", body={"tasks": [{"data": "text"}], "label_config": SENTIMENT_EN},
         expected=200),
    Case("action_a_number", "POST", "/webhook", body={"action": 7}),
    Case("preannotate_task_ids_strings", "POST", "/preannotate", body={"project": 3, "tasks": ["1"]}),
    Case("preannotate_task_ids_bools", "POST", "/preannotate", body={"project": 3, "tasks": [True]}),
    Case("preannotate_task_ids_huge", "POST", "/preannotate", body={"project": 3, "tasks": [10**30, -1]}),
    Case("setup_hostname_100k_chars", "POST", "/setup",
         body={"project": "3.1", "schema": SENTIMENT_EN, "hostname": "http://" + LONG_TEXT}),
    Case("setup_token_100k_chars", "POST", "/setup", body={"project": "3.1", "schema": SENTIMENT_EN, "access_token": LONG_TEXT}),
    Case("extra_params_a_list", "POST", "/setup", body={"project": "3.1", "schema": SENTIMENT_EN, "extra_params": [1]},
         expected=200),
    # unknown label-config tags, configs that are not XML
    Case("unknown_tags", "POST", "/setup", body={"project": "3.1", "schema": '<View><Blob name="b" value="$x"/></View>'},
         expected=422),
    Case("unknown_tags_predict", "POST", "/predict",
         body={"tasks": [{"data": {"text": "a"}}], "label_config": "<View><Foo/><Bar toName='x'/></View>"}, expected=422),
    Case("config_not_xml", "POST", "/setup", body={"project": "3.1", "schema": "<View><Choices"}, expected=422),
    Case("config_100k_chars", "POST", "/setup", body={"project": "3.1", "schema": LONG_TEXT}, expected=422),
    # a body over MAX_REQUEST_BYTES (the app under test allows 256 KiB)
    *[Case(f"over_size_limit{p}", "POST", p, raw=b'{"x": "' + b"a" * 300_000 + b'"}', expected=413) for p in POST_PATHS],
    # huge task lists that are not tasks
    Case("huge_list_of_numbers", "POST", "/predict", raw=json.dumps({"tasks": list(range(9000))}).encode()),
    # unknown routes and methods
    Case("unknown_route", "GET", "/predictions", expected=404),
    Case("unknown_long_route", "GET", "/" + "a" * 10_000, expected=404),
    Case("get_on_predict", "GET", "/predict", expected=405),
    Case("delete_on_setup", "DELETE", "/setup", expected=405),
    # project ids that are not Label Studio ids, in bodies and in query parameters
    *[Case(f"setup_project_{n}", "POST", "/setup", body={"project": v, "schema": SENTIMENT_EN})
      for n, v in BAD_PROJECT_IDS.items()],
    *[Case(f"predict_project_{n}", "POST", "/predict",
           body={"project": v, "tasks": [{"data": {"text": "a"}}], "label_config": SENTIMENT_EN})
      for n, v in BAD_PROJECT_IDS.items()],
    *[Case(f"task_project_{n}", "POST", "/predict",
           body={"tasks": [{"project": v, "data": {"text": "a"}}], "label_config": SENTIMENT_EN})
      for n, v in BAD_PROJECT_IDS.items()],
    *[Case(f"webhook_project_{n}", "POST", "/webhook", body={"action": "TASKS_CREATED", "project": {"id": v}})
      for n, v in BAD_PROJECT_IDS.items()],
    *[Case(f"preannotate_project_{n}", "POST", "/preannotate", body={"project": v}) for n, v in BAD_PROJECT_IDS.items()],
    *[Case(f"query_project_{n}{p}", "GET", f"{p}?project={v}") for p in PROJECT_QUERY_PATHS
      for n, v in BAD_PROJECT_IDS.items() if isinstance(v, str) and "\x00" not in v],
]


@pytest.fixture
def small_app(settings, keyword_runtime):
    """The app with a 256 KiB body limit: the 100,000-character values fit, the over-size rows stay small."""
    from ml_backend.app import create_app

    return create_app(settings.model_copy(update={"max_request_bytes": 256 * 1024}), runtime_loader=lambda: keyword_runtime)


@pytest.fixture
def small_client(small_app):
    return small_app.test_client()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gets_a_4xx_that_says_why(small_client, case, caplog):
    caplog.set_level("INFO")
    response = case.send(small_client)
    assert response.status_code == case.expected, response.get_data(as_text=True)[:500]
    if case.expected >= 400:
        body = response.get_json()
        assert isinstance(body, dict) and set(body) >= {"error", "hint"}
        assert body["error"] and isinstance(body["hint"], str)
        assert len(response.get_data()) < 4000, "a client-supplied value was echoed unbounded"
    longest = max((len(record.getMessage()) for record in caplog.records), default=0)
    assert longest < 2000, "a client-supplied value reached a log line unbounded"
    assert small_client.get("/health").get_json()["status"] == "UP"


ODD_TEXTS = {
    "emoji": "I 😍 this film 👍🏽 𠮷",
    "cjk": "这部电影非常好看，我很喜欢。",
    "rtl": "هذا الفيلم رائع \u202e gnitirw desrever",
    "control": "a\x00b\x01c\x1b[31m\r\nd\u200b\ufeff",
    "empty": "",
    "long": "word " * 20_000,
}


def test_odd_texts_get_one_prediction_each(client):
    tasks = [{"id": i, "data": {"text": text}} for i, text in enumerate(ODD_TEXTS.values())]
    response = client.post("/predict", json={"tasks": tasks, "label_config": SENTIMENT_EN})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    assert all(result["result"] for result in results[:-2]), "a non-empty text got no label"


def test_a_huge_task_list_gets_one_prediction_per_task_in_order(client):
    tasks = [{"id": i, "data": {"text": "great" if i % 2 else "awful"}} for i in range(2000)]
    response = client.post("/predict", json={"tasks": tasks, "label_config": SENTIMENT_EN})
    assert response.status_code == 200
    assert len(response.get_json()["results"]) == len(tasks)


@pytest.mark.parametrize("action", ["SOMETHING_NEW", "", "x" * 100_000, "ANNOTATION_CREATED\n", "😀"])
def test_unknown_webhook_actions_are_ignored_with_200(client, action):
    response = client.post("/webhook", json={"action": action, "project": {"id": 3}})
    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert len(response.get_data()) < 1000


def test_a_long_project_id_never_reaches_the_disk(client, settings):
    for body in ({"project": LONG, "schema": SENTIMENT_EN}, {"project": int(LONG[:4000]), "schema": SENTIMENT_EN}):
        assert client.post("/setup", json=body).status_code == 400
    stored = [path for path in settings.model_dir.rglob("*")] if settings.model_dir.exists() else []
    assert all(len(path.name) < 64 for path in stored)


CONNECTED = "3.1795457094"  # the key webhooks of project {"id": 3, "created_at": ...} resolve to
WEBHOOK_ACTIONS = ("TASKS_CREATED", "PROJECT_UPDATED", "ANNOTATION_CREATED", "ANNOTATION_UPDATED",
                   "ANNOTATIONS_DELETED", "START_TRAINING")
WRONG_WEBHOOK_FIELDS = {
    "tasks_a_number": {"tasks": 5},
    "tasks_a_string": {"tasks": "abc"},
    "tasks_of_junk": {"tasks": [5, None, {"id": "x"}, {"id": True}, {"id": 10**30}]},
    "annotation_a_number": {"annotation": 5},
    "annotation_id_a_string": {"annotation": {"id": "x" * 10_000, "result": "no"}},
    "annotations_a_number": {"annotations": 5},
    "annotations_a_string": {"annotations": "xyz"},
    "project_config_a_number": {"project": {"id": 3, "label_config": 5}},
    "project_config_unknown_tags": {"project": {"id": 3, "label_config": "<View><Blob/></View>"}},
    "project_created_at_a_number": {"project": {"id": 3, "created_at": 5}},
    "project_created_at_garbage": {"project": {"id": 3, "created_at": "yesterday" * 1000}},
    "project_counts_strings": {"project": {"id": 3, "total_annotations_number": "many", "task_number": []}},
    "project_a_bare_id": {"project": 3},
}


@pytest.fixture
def connected_client(settings, keyword_runtime):
    """An app with background pre-annotation and training on, and project 3 connected (no Label
    Studio answers: the jobs it starts fail fast in their thread, the webhooks must not)."""
    from ml_backend.app import create_app

    app = create_app(settings.model_copy(update={"preannotate_auto": True, "job_retries": 0}),
                     runtime_loader=lambda: keyword_runtime)
    client = app.test_client()
    assert client.post("/setup", json={"project": CONNECTED, "schema": SENTIMENT_EN}).status_code == 200
    return client


@pytest.mark.parametrize("action", WEBHOOK_ACTIONS)
@pytest.mark.parametrize("fields", WRONG_WEBHOOK_FIELDS.values(), ids=WRONG_WEBHOOK_FIELDS.keys())
def test_wrong_typed_webhook_fields_of_a_connected_project_get_no_server_error(connected_client, action, fields):
    body = {"action": action, "project": {"id": 3, "created_at": "2026-11-23T18:04:54Z"}, **fields}
    response = connected_client.post("/webhook", json=body)
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    assert response.is_json and len(response.get_data()) < 4000
    assert connected_client.get("/health").get_json()["status"] == "UP"


@pytest.mark.parametrize("path", ["/versions?project=3", f"/versions?project={CONNECTED}",
                                  "/preannotate/status?project=3", "/preannotate/status", "/metrics"])
def test_reading_a_connected_project_without_label_studio_gets_no_server_error(connected_client, path):
    response = connected_client.get(path)
    assert response.status_code < 500, response.get_data(as_text=True)[:500]


@pytest.mark.parametrize("hostname", [None, "http://127.0.0.1:9"], ids=["no_credentials", "connection_refused"])
@pytest.mark.parametrize("query", ["", "&format=json"])
def test_the_report_without_label_studio_is_a_503_that_says_what_to_check(connected_client, hostname, query):
    """/report reads the reviewed tasks from Label Studio: unreachable, it is upstream's state, not a bug."""
    if hostname:
        setup = {"project": CONNECTED, "schema": SENTIMENT_EN, "hostname": hostname, "access_token": "t"}
        assert connected_client.post("/setup", json=setup).status_code == 200
    response = connected_client.get(f"/report?project=3{query}")
    assert response.status_code == 503
    body = response.get_json()
    assert "Label Studio" in body["error"] and "LABEL_STUDIO_URL" in body["hint"]


ODD_TASKS = [
    {"id": "x", "data": {"text": 5}},
    {"data": {"text": None}},
    {"data": {}},
    {},
    {"id": 10**30, "data": {"text": "a"}},
    {"id": True, "data": {"text": ["a", "b"]}},
    {"id": 7, "data": {"text": {"nested": "object"}}},
]


@pytest.mark.parametrize("project", [CONNECTED, "3", None])
def test_odd_tasks_of_a_connected_project_each_get_a_prediction(connected_client, project):
    body = {"tasks": ODD_TASKS, "label_config": SENTIMENT_EN, **({"project": project} if project else {})}
    response = connected_client.post("/predict", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert len(response.get_json()["results"]) == len(ODD_TASKS)
