"""Security (issue 14, item 7), against real Flask apps and one live gunicorn backend.

- Basic auth on every route of `app.url_map` but the health check, with hand-written and generated
  `Authorization` headers (malformed base64, wrong schemes, unicode, 100 KB, empty passwords):
  401 `{"error", "hint"}`, never a 5xx; the right header is never refused.
- The webhook secret (`WEBHOOK_SECRET`) on /webhook and /train, in the headers Label Studio's
  webhook form can add.
- Known secret values (basic auth password, `LABEL_STUDIO_API_KEY`, `LLM_API_KEY`, /setup's
  access token, the webhook secret) never in a log line or a response, over representative
  requests, background jobs that fail against a Label Studio and a model server that refuse them.
- The state file holding /setup's token is 0600 in 0700 folders, also after atomic rewrites.
- gunicorn's timeout is finite; task texts that are URLs are never fetched; /setup's `hostname`
  must be http(s).

`RELIABILITY_AUTH_HEADERS` sets how many generated headers each route gets (40 in `make test`,
2,000 in `make soak`).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.conftest import LABELING_CONFIGS, REPO_ROOT

SENTIMENT_EN = (LABELING_CONFIGS / "sentiment_en.xml").read_text(encoding="utf-8")
AUTH_HEADERS_PER_ROUTE = int(os.environ.get("RELIABILITY_AUTH_HEADERS", "40"))

USER = "labeler"
PASSWORD = "basic-pass-7f3a9c41"
LS_API_KEY = "ls-api-key-2b8e41d0aa"
LLM_API_KEY = "llm-api-key-9d1c55ef"
SETUP_TOKEN = "setup-token-51ac0e77"
WEBHOOK_SECRET = "webhook-secret-c0ffee42"
SECRETS = {
    "BASIC_AUTH_PASS": PASSWORD,
    "LABEL_STUDIO_API_KEY": LS_API_KEY,
    "LLM_API_KEY": LLM_API_KEY,
    "setup access_token": SETUP_TOKEN,
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "basic auth header": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
}
PROJECT = "3.1795457094"
PROJECT_BODY = {"id": 3, "created_at": "2026-11-23T18:04:54Z"}


def basic(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


RIGHT = {"Authorization": basic()}


# --- a local HTTP server that records every request it gets --------------------------------------
@dataclass
class RecordingServer:
    """Answers every request with `status` and a small JSON body, and records (method, path, headers)."""

    status: int = 401
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]


@pytest.fixture
def recording_server() -> Iterator[RecordingServer]:
    record = RecordingServer()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            record.requests.append((self.command, self.path, dict(self.headers)))
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = json.dumps({"detail": "Invalid token."}).encode()
            self.send_response(record.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

        def log_message(self, *args) -> None:  # no stderr noise in the test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def build_app(settings, keyword_runtime, **overrides):
    from ml_backend.app import create_app

    return create_app(settings.model_copy(update=overrides), runtime_loader=lambda: keyword_runtime)


def every_route(app) -> list[tuple[str, str]]:
    """(method, path) of every rule of the app, without the methods Flask adds (HEAD, OPTIONS)."""
    routes = []
    for rule in app.url_map.iter_rules():
        assert not rule.arguments, f"{rule.rule}: a route with parameters needs a sample value here"
        routes.extend((method, rule.rule) for method in sorted(rule.methods - {"HEAD", "OPTIONS"}))
    return sorted(routes)


def request_body(path: str) -> dict | None:
    """A body each POST route accepts (the auth check runs first; the body only has to parse)."""
    return {
        "/setup": {"project": PROJECT, "schema": SENTIMENT_EN},
        "/predict": {"tasks": [{"id": 1, "data": {"text": "great"}}], "label_config": SENTIMENT_EN},
        "/webhook": {"action": "SOMETHING_ELSE"},
        "/train": {},
        "/preannotate": {"project": 3},
        "/queue/refresh": {"project": 3},
    }.get(path)


def send(client, method: str, path: str, headers: dict[str, str]):
    body = request_body(path)
    return client.open(path, method=method, headers=headers,
                       data=None if body is None else json.dumps(body), content_type="application/json")


def assert_unauthorized(response, what: str) -> None:
    assert response.status_code == 401, f"{what}: {response.status_code} {response.get_data(as_text=True)[:300]}"
    body = response.get_json()
    assert set(body) == {"error", "hint"} and body["error"] and body["hint"], what
    assert len(response.get_data()) < 1000, what


# --- 1. basic auth on every route but the health check ---------------------------------------------
@pytest.fixture
def auth_client(settings, keyword_runtime):
    return build_app(settings, keyword_runtime, basic_auth_user=USER, basic_auth_pass=PASSWORD).test_client()


def test_every_route_but_the_health_check_needs_basic_auth(auth_client):
    routes = every_route(auth_client.application)
    assert {path for _, path in routes} >= {"/setup", "/predict", "/webhook", "/metrics", "/openapi.json"}
    for method, path in routes:
        without = send(auth_client, method, path, {})
        if path in ("/health", "/"):
            assert without.status_code == 200 and set(without.get_json()) == {"status", "model_class", "model_loaded"}
            continue
        assert_unauthorized(without, f"{method} {path} without credentials")
        assert without.headers["WWW-Authenticate"].startswith("Basic")
        right = send(auth_client, method, path, RIGHT)
        assert right.status_code not in (401, 403) and right.status_code < 500, f"{method} {path}: {right.status_code}"


HAND_WRITTEN_HEADERS = {
    "empty": "",
    "scheme_only": "Basic",
    "scheme_and_space": "Basic ",
    "wrong_scheme_bearer": "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    "wrong_scheme_token": f"Token {PASSWORD}",
    "digest": f'Digest username="{USER}", realm="ml-backend"',
    "not_base64": "Basic %%%not-base64%%%",
    "truncated_base64": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()[:-1],
    "bad_padding": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}x".encode()).decode().rstrip("="),
    "base64_of_garbage_bytes": "Basic " + base64.b64encode(b"\xff\xfe\x00\x01").decode(),
    "no_colon": "Basic " + base64.b64encode(f"{USER}{PASSWORD}".encode()).decode(),
    "empty_password": basic(USER, ""),
    "empty_user": basic("", PASSWORD),
    "both_empty": basic("", ""),
    "wrong_password": basic(USER, PASSWORD + "x"),
    "password_prefix": basic(USER, PASSWORD[:-1]),
    "swapped": basic(PASSWORD, USER),
    "unicode_password": basic(USER, "pässwörd😀"),
    "unicode_in_header": "Basic ünïcödé😀",
    "nul_bytes": "Basic " + base64.b64encode(f"{USER}\x00:{PASSWORD}\x00".encode()).decode(),
    "huge_100kb": "Basic " + "A" * 100_000,
    "huge_valid_prefix": basic() + "A" * 100_000,
    "two_credentials": basic() + ", " + basic(),
    "raw_password": PASSWORD,
    "raw_user_colon_password": f"{USER}:{PASSWORD}",
}


@pytest.mark.parametrize("header", HAND_WRITTEN_HEADERS.values(), ids=HAND_WRITTEN_HEADERS.keys())
def test_a_malformed_or_wrong_authorization_header_gets_401_json(auth_client, header):
    for method, path in (("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"), ("GET", "/metrics")):
        assert_unauthorized(send(auth_client, method, path, {"Authorization": header}), f"{method} {path}")
    assert auth_client.get("/health").get_json()["status"] == "UP"


@pytest.mark.parametrize("header", [
    basic(), "basic " + basic()[6:], "BASIC " + basic()[6:], "  " + basic() + "  ", "Basic   " + basic()[6:],
])
def test_the_right_credentials_are_accepted_in_every_spelling_rfc_7235_allows(auth_client, header):
    assert send(auth_client, "POST", "/setup", {"Authorization": header}).status_code == 200


def test_non_ascii_credentials_work_as_utf8_and_as_latin1(settings, keyword_runtime):
    """Label Studio's model connection sends basic auth through `requests`, which encodes latin-1."""
    client = build_app(settings, keyword_runtime, basic_auth_user="anwender", basic_auth_pass="päss").test_client()
    for encoding in ("utf-8", "latin-1"):
        header = "Basic " + base64.b64encode("anwender:päss".encode(encoding)).decode()
        assert client.get("/versions", headers={"Authorization": header}).status_code == 200, encoding


def generated_headers(rng: random.Random, count: int) -> Iterator[str]:
    """Mutations of the right header and of random credentials: flipped, dropped and inserted
    characters (ASCII, latin-1, emoji), other schemes, truncations, repetitions, random bytes as
    base64, random text; and the right credentials in other spellings. Never CR/LF (no HTTP client can send them inside a header)."""
    right = basic()
    alphabet = "AZaz09+/=: \t.,;\"'\\%äß€😀𠮷\u202e\x00\x7f"
    for _ in range(count):
        kind = rng.randrange(8)
        if kind == 0:  # flip one character
            i = rng.randrange(len(right))
            yield right[:i] + rng.choice(alphabet) + right[i + 1:]
        elif kind == 1:  # drop or insert
            i = rng.randrange(len(right))
            yield right[:i] + right[i + 1:] if rng.random() < 0.5 else right[:i] + rng.choice(alphabet) + right[i:]
        elif kind == 2:  # other scheme
            yield rng.choice(["Bearer", "Token", "Digest", "Basicx", "Bas ic", "NTLM", ""]) + " " + right[6:]
        elif kind == 3:  # truncated or repeated
            yield right[: rng.randrange(len(right))] if rng.random() < 0.5 else right * rng.randrange(2, 300)
        elif kind == 4:  # random credentials, some near the real ones
            user = rng.choice([USER, "", USER.upper(), "".join(rng.choices(alphabet, k=rng.randrange(12)))])
            password = rng.choice([PASSWORD[:rng.randrange(len(PASSWORD))], "", "".join(rng.choices(alphabet, k=rng.randrange(30)))])
            yield basic(user, password)
        elif kind == 5:  # random bytes, base64-encoded
            yield "Basic " + base64.b64encode(rng.randbytes(rng.randrange(0, 200))).decode()
        elif kind == 6:  # random text
            yield "".join(rng.choices(alphabet, k=rng.randrange(0, rng.choice([20, 200, 9000]))))
        else:  # the right credentials, spelled as RFC 7235 allows: scheme in any case, blanks around
            scheme = "".join(c.upper() if rng.random() < 0.5 else c for c in "basic")
            pad = lambda: "".join(rng.choices(" \t", k=rng.randrange(3)))  # noqa: E731
            yield f"{pad()}{scheme} {pad()}{right[6:]}{pad()}"


def oracle_accepts(header: str) -> bool:
    """Independent of the code under test: scheme `basic` in any case, strict base64 of `user:password`."""
    match = re.fullmatch(r"[ \t]*[Bb][Aa][Ss][Ii][Cc] [ \t]*([A-Za-z0-9+/]*={0,2})[ \t]*", header)
    if not match:
        return False
    try:
        return base64.b64decode(match.group(1), validate=True) == f"{USER}:{PASSWORD}".encode()
    except ValueError:
        return False


def test_generated_authorization_headers_on_every_route_never_get_a_server_error(auth_client, figures_line):
    rng = random.Random(20261202)
    routes = [r for r in every_route(auth_client.application) if r[1] not in ("/health", "/")]
    statuses: dict[int, int] = {}
    accepted = 0
    for method, path in routes:
        for header in generated_headers(rng, AUTH_HEADERS_PER_ROUTE):
            response = send(auth_client, method, path, {"Authorization": header})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, f"{method} {path} {header[:80]!r}: {response.status_code}"
            if oracle_accepts(header):
                accepted += 1
                assert response.status_code != 401, f"{method} {path}: right credentials refused: {header[:80]!r}"
            else:
                assert_unauthorized(response, f"{method} {path} {header[:80]!r}")
    assert auth_client.get("/health").get_json()["status"] == "UP"
    figures_line(f"security: {sum(statuses.values())} generated Authorization headers on {len(routes)} routes: "
                 f"statuses {dict(sorted(statuses.items()))}, {accepted} of them the right credentials")


@pytest.fixture
def figures_line(request):
    """Adds a figures line to the end of the run's output: the terminal summary of the reliability
    conftest, found as pytest loaded it (its module name depends on pytest's import mode)."""
    conftest = next(plugin for plugin in request.config.pluginmanager.get_plugins()
                    if getattr(plugin, "__file__", None) == str(Path(__file__).with_name("conftest.py")))
    return conftest._SUMMARY_LINES.append


# --- 2. the webhook secret ---------------------------------------------------------------------------
WEBHOOK = {"action": "SOMETHING_ELSE", "project": PROJECT_BODY}


@pytest.mark.parametrize("path", ["/webhook", "/train"])
def test_webhooks_need_the_secret_when_it_is_set(settings, keyword_runtime, path):
    client = build_app(settings, keyword_runtime, webhook_secret=WEBHOOK_SECRET).test_client()
    for headers in ({}, {"X-Webhook-Secret": ""}, {"X-Webhook-Secret": WEBHOOK_SECRET + "x"},
                    {"X-Webhook-Secret": WEBHOOK_SECRET[:-1]}, {"X-Webhook-Secret": "sécret😀"},
                    {"Authorization": f"Token {WEBHOOK_SECRET}"}, {"Authorization": "Bearer"},
                    {"X-Other": WEBHOOK_SECRET}, {"X-Webhook-Secret": "A" * 100_000}):
        assert_unauthorized(client.post(path, json=WEBHOOK, headers=headers), f"{path} {str(headers)[:60]}")
    for headers in ({"X-Webhook-Secret": WEBHOOK_SECRET}, {"x-webhook-secret": f" {WEBHOOK_SECRET} "},
                    {"Authorization": f"Bearer {WEBHOOK_SECRET}"}, {"Authorization": f"bearer {WEBHOOK_SECRET}"}):
        assert client.post(path, json=WEBHOOK, headers=headers).status_code == 200, headers
    # the secret guards the webhooks only (without basic auth, the other routes stay open)
    assert client.get("/versions").status_code == 200


def test_with_basic_auth_too_a_webhook_needs_the_secret_or_the_connection_credentials(settings, keyword_runtime):
    client = build_app(settings, keyword_runtime, webhook_secret=WEBHOOK_SECRET,
                       basic_auth_user=USER, basic_auth_pass=PASSWORD).test_client()
    assert_unauthorized(client.post("/webhook", json=WEBHOOK), "no credentials")
    assert_unauthorized(client.post("/webhook", json=WEBHOOK, headers={"Authorization": basic(USER, "wrong")}), "bad basic")
    # Label Studio's webhook form: only the secret header was added
    assert client.post("/webhook", json=WEBHOOK, headers={"X-Webhook-Secret": WEBHOOK_SECRET}).status_code == 200
    # Start Training goes through the model connection: its basic auth, no webhook headers
    assert client.post("/webhook", json=WEBHOOK, headers=RIGHT).status_code == 200
    # the webhook secret opens no other route
    assert_unauthorized(client.get("/versions", headers={"X-Webhook-Secret": WEBHOOK_SECRET}), "secret on /versions")
    assert_unauthorized(client.get("/versions", headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"}), "bearer")


def test_without_auth_settings_nothing_is_asked(client):
    assert client.post("/webhook", json=WEBHOOK).status_code == 200
    assert client.get("/versions").status_code == 200


# --- 3. secrets never in logs or responses ---------------------------------------------------------
def leaks(texts: dict[str, str]) -> list[str]:
    """'<secret name> in <where>' for every known secret found in one of the texts."""
    return [f"{name} in {where}" for where, text in texts.items() for name, value in SECRETS.items() if value in text]


def representative_requests(client, label_studio_url: str) -> dict[str, str]:
    """What Label Studio and a user send, right and wrong; every response body and header, by request."""
    good_hook = {"X-Webhook-Secret": WEBHOOK_SECRET}
    calls = [
        ("GET", "/health", {}, None), ("GET", "/", {}, None),
        ("POST", "/setup", RIGHT, {"project": PROJECT, "schema": SENTIMENT_EN, "hostname": label_studio_url,
                                   "access_token": SETUP_TOKEN, "extra_params": '{"instruction": "Judge."}'}),
        ("POST", "/setup", RIGHT, {"project": PROJECT, "schema": SENTIMENT_EN, "hostname": "file:///etc/passwd",
                                   "access_token": SETUP_TOKEN}),
        ("POST", "/setup", RIGHT, {"project": PROJECT, "schema": SENTIMENT_EN, "access_token": SETUP_TOKEN * 300}),
        ("POST", "/setup", RIGHT, {"project": PROJECT, "schema": "<View><Choices", "access_token": SETUP_TOKEN}),
        ("POST", "/setup", {"Authorization": basic(PASSWORD, "wrong")}, {"schema": SENTIMENT_EN}),
        ("POST", "/setup", {"Authorization": basic(USER, PASSWORD + "x")}, {"schema": SENTIMENT_EN}),
        ("POST", "/predict", RIGHT, {"project": PROJECT, "tasks": [{"id": 1, "data": {"text": "great"}},
                                                                   {"id": 2, "data": {"text": "awful"}}]}),
        ("POST", "/predict", RIGHT, {"tasks": "all"}),
        ("POST", "/webhook", good_hook, {"action": "TASKS_CREATED", "project": PROJECT_BODY,
                                         "tasks": [{"id": 5, "data": {"text": "fine"}}]}),
        ("POST", "/webhook", good_hook, {"action": "ANNOTATION_CREATED", "project": PROJECT_BODY,
                                         "annotation": {"id": 9, "task": 5}, "task": {"id": 5}}),
        ("POST", "/webhook", good_hook, {"action": "START_TRAINING", "project": PROJECT_BODY}),
        ("POST", "/webhook", good_hook, {"action": "PROJECT_UPDATED", "project": {**PROJECT_BODY, "label_config": SENTIMENT_EN}}),
        ("POST", "/webhook", {"X-Webhook-Secret": WEBHOOK_SECRET + "x"}, {"action": "START_TRAINING"}),
        ("POST", "/webhook", {"Authorization": f"Bearer {WEBHOOK_SECRET[:-1]}"}, {"action": "START_TRAINING"}),
        ("POST", "/train", RIGHT, {"project": PROJECT_BODY}),
        ("POST", "/preannotate", RIGHT, {"project": 3}),
        ("POST", "/queue/refresh", RIGHT, {"project": 3}),
        ("GET", "/versions?project=3", RIGHT, None), ("GET", "/preannotate/status?project=3", RIGHT, None),
        ("GET", "/report?project=3", RIGHT, None), ("GET", "/openapi.json", RIGHT, None),
        ("GET", "/nowhere", RIGHT, None), ("DELETE", "/setup", RIGHT, None),
    ]
    seen = {}
    for method, path, headers, body in calls:
        response = client.open(path, method=method, headers=headers, json=body)
        assert response.status_code < 500 or response.status_code == 503, f"{method} {path}: {response.status_code}"
        seen[f"#{len(seen)} {method} {path} ({response.status_code})"] = response.get_data(as_text=True) + str(response.headers)
    return seen


def all_log_text(caplog) -> str:
    """Every captured record as its handler formatted it, tracebacks included."""
    return "\n".join(caplog.text.splitlines())


@pytest.mark.parametrize("ls_key", [None, LS_API_KEY], ids=["setup_token", "label_studio_api_key"])
def test_no_secret_reaches_a_log_line_or_a_response(settings, keyword_runtime, recording_server, caplog, ls_key,
                                                    figures_line):
    """Background jobs run and fail against a "Label Studio" that refuses the token (401)."""
    import logging

    from ml_backend.app import services_of

    caplog.set_level(logging.DEBUG)
    app = build_app(settings, keyword_runtime, basic_auth_user=USER, basic_auth_pass=PASSWORD,
                    webhook_secret=WEBHOOK_SECRET, label_studio_api_key=ls_key, llm_api_key=LLM_API_KEY,
                    preannotate_auto=True, job_retries=0, label_studio_timeout_s=2)
    client = app.test_client()
    responses = representative_requests(client, recording_server.url)
    assert services_of(app).runner.wait_idle(60)
    responses["GET /metrics"] = client.get("/metrics", headers=RIGHT).get_data(as_text=True)
    log_text = all_log_text(caplog)
    # the jobs did call Label Studio, with the token: the protocol (and so the leak check saw their errors)
    sent = [h.get("Authorization", "") for _, _, h in recording_server.requests]
    assert sent and all((ls_key or SETUP_TOKEN) in value for value in sent)
    assert "event=" in log_text and len(caplog.records) > 20
    assert leaks({"the log": log_text, **responses}) == []
    figures_line(f"security ({ls_key and 'LABEL_STUDIO_API_KEY' or 'setup token'}): {len(responses)} responses, "
                 f"{len(caplog.records)} log records, {len(recording_server.requests)} calls to Label Studio: "
                 f"0 of {len(SECRETS)} secrets found")


def test_the_model_server_key_never_reaches_a_log_line_or_a_response(settings, recording_server, caplog):
    """LLM_BASE_URL answers 401 to the key: /predict gets a 503 that says why, without the key."""
    import logging

    from ml_backend.app import create_app

    caplog.set_level(logging.DEBUG)
    recording_server.status = 401
    app = create_app(settings.model_copy(update={
        "llm_base_url": recording_server.url, "llm_api_key": LLM_API_KEY, "llm_retries": 0,
        "llm_chat_template": None, "basic_auth_user": USER, "basic_auth_pass": PASSWORD,
    }))
    client = app.test_client()
    response = client.post("/predict", headers=RIGHT,
                           json={"tasks": [{"id": 1, "data": {"text": "good"}}], "label_config": SENTIMENT_EN})
    assert response.status_code in (200, 503), response.get_data(as_text=True)[:300]
    assert any(LLM_API_KEY in h.get("Authorization", "") for _, _, h in recording_server.requests)
    assert leaks({"the log": all_log_text(caplog), "/predict": response.get_data(as_text=True)}) == []


def test_settings_and_state_do_not_print_their_secrets(settings):
    from ml_backend.model_store import ProjectState

    secured = settings.model_copy(update={"basic_auth_pass": PASSWORD, "label_studio_api_key": LS_API_KEY,
                                          "llm_api_key": LLM_API_KEY, "webhook_secret": WEBHOOK_SECRET})
    state = ProjectState(project_id=PROJECT, label_studio_token=SETUP_TOKEN)
    assert leaks({"repr(Settings)": repr(secured), "str(Settings)": str(secured), "repr(ProjectState)": repr(state)}) == []


# --- 4. the token on disk ------------------------------------------------------------------------------
def assert_private(store_root: Path, state_file: Path) -> None:
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600, oct(state_file.stat().st_mode)
    folder = state_file.parent
    while folder != store_root:
        assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, f"{folder}: {oct(folder.stat().st_mode)}"
        folder = folder.parent


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask_022", "umask_000"])
def test_the_state_file_holding_the_token_stays_0600_in_private_folders(settings, keyword_runtime, umask):
    from ml_backend.app import services_of

    previous = os.umask(umask)
    try:
        app = build_app(settings, keyword_runtime)
        client = app.test_client()
        body = {"project": PROJECT, "schema": SENTIMENT_EN, "hostname": "http://ls:8080", "access_token": SETUP_TOKEN}
        assert client.post("/setup", json=body).status_code == 200
        store = services_of(app).store
        state_file = next(settings.model_dir.rglob("state.json"))
        assert SETUP_TOKEN in state_file.read_text()
        assert_private(settings.model_dir, state_file)
        for token in ("rotated-token-1", "rotated-token-2"):  # atomic rewrites: a new file renamed over it
            inode = state_file.stat().st_ino
            assert client.post("/setup", json={**body, "access_token": token}).status_code == 200
            assert state_file.stat().st_ino != inode and token in state_file.read_text()
            assert_private(settings.model_dir, state_file)
        store.update(PROJECT, lambda state: setattr(state, "instruction", "Judge."))
        assert_private(settings.model_dir, state_file)
        assert not list(state_file.parent.glob(".state.json.*.tmp")), "a temporary copy of the token was left"
    finally:
        os.umask(previous)


def test_a_project_folder_an_older_version_left_world_readable_is_narrowed(settings, keyword_runtime):
    from ml_backend.app import services_of

    store = services_of(build_app(settings, keyword_runtime)).store
    store.update(PROJECT, lambda state: None)
    state_file = next(settings.model_dir.rglob("state.json"))
    for folder in (state_file.parent, state_file.parent.parent):
        os.chmod(folder, 0o755)
    store.update(PROJECT, lambda state: setattr(state, "label_studio_token", SETUP_TOKEN))
    assert_private(settings.model_dir, state_file)


# --- 5. gunicorn's timeout ---------------------------------------------------------------------------
def gunicorn_conf(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """ml_backend/gunicorn_conf.py evaluated as gunicorn does, in a child (it exports PROMETHEUS_MULTIPROC_DIR)."""
    script = ("import json, runpy; c = runpy.run_path('ml_backend/gunicorn_conf.py'); "
              "print(json.dumps({k: c[k] for k in ('timeout', 'graceful_timeout', 'worker_class', 'threads')}))")
    clean = {k: v for k, v in os.environ.items() if k not in ("WORKER_TIMEOUT", "PROMETHEUS_MULTIPROC_DIR")}
    return subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**clean, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **env})


def test_gunicorn_replaces_a_silent_worker_after_a_finite_timeout(tmp_path):
    default = gunicorn_conf(tmp_path)
    assert default.returncode == 0, default.stderr
    conf = json.loads(default.stdout.strip().splitlines()[-1])
    assert 100 < conf["timeout"] < 3600, "above Label Studio's 100 s predict timeout, and finite"
    assert 0 < conf["graceful_timeout"] < 3600
    assert json.loads(gunicorn_conf(tmp_path, WORKER_TIMEOUT="240").stdout.strip().splitlines()[-1])["timeout"] == 240
    # 0 means "never" to gunicorn: refused before gunicorn binds
    refused = gunicorn_conf(tmp_path, WORKER_TIMEOUT="0")
    assert refused.returncode != 0 and "WORKER_TIMEOUT" in refused.stdout + refused.stderr


# --- 6. no SSRF ----------------------------------------------------------------------------------------
def url_texts(base: str) -> list[str]:
    return [f"{base}/page", f"{base}/data/upload/1/reviews.txt", "/data/upload/1/reviews.txt",
            f"{base.replace('http', 'https')}/secure", "file:///etc/passwd", f"{base}/?ref=" + "x" * 500,
            f"<a href='{base}/link'>see</a>", f"s3://bucket/key {base}/mixed text"]


def test_task_texts_that_are_urls_are_labeled_as_text_and_never_fetched(client, recording_server):
    texts = url_texts(recording_server.url)
    tasks = [{"id": i + 1, "data": {"text": text}} for i, text in enumerate(texts)]
    response = client.post("/predict", json={"tasks": tasks, "label_config": SENTIMENT_EN})
    assert response.status_code == 200
    assert len(response.get_json()["results"]) == len(tasks)
    assert recording_server.requests == []


def test_the_background_job_labels_url_texts_without_fetching_them(settings, keyword_runtime, recording_server):
    """The whole job (cold start, scoring, writing) with Label Studio at the recording server's
    address: the only calls are the API's (here served by an in-memory Label Studio), none to the
    URLs in the tasks, none to /data/upload."""
    from ml_backend.app import services_of
    from tests.fakes import FakeLabelStudio

    app = build_app(settings, keyword_runtime, preannotate_auto=True, job_retries=0, demonstrations=0,
                    preannotate_first_page=0)
    services = services_of(app)
    fake = FakeLabelStudio.with_texts(url_texts(recording_server.url))
    services.client_factory = lambda state: fake
    client = app.test_client()
    body = {"project": "7.1795457094", "schema": SENTIMENT_EN, "hostname": recording_server.url, "access_token": "t"}
    assert client.post("/setup", json=body).status_code == 200
    assert services.runner.wait_idle(60)
    assert {p["task"] for p in fake.predictions.values()} == set(fake.task_data)
    assert recording_server.requests == []


@pytest.mark.parametrize("hostname", ["file:///etc/passwd", "gopher://127.0.0.1:6379/_FLUSHALL", "ftp://ls/",
                                      "javascript:alert(1)", "localhost:8080", "http://", "//ls:8080", "http://[::1"])
def test_setup_refuses_a_hostname_that_is_not_an_http_url(client, settings, hostname):
    response = client.post("/setup", json={"project": PROJECT, "schema": SENTIMENT_EN, "hostname": hostname,
                                           "access_token": SETUP_TOKEN})
    assert response.status_code == 400 and "hostname" in response.get_json()["error"]
    assert not list(settings.model_dir.rglob("state.json")), "the refused URL and token were stored"


@pytest.mark.parametrize("hostname", ["http://localhost:8080", "https://label.example.org/", "HTTP://10.0.0.5:8080",
                                      "http://[::1]:8080", "", None])
def test_setup_accepts_label_studios_own_url(client, hostname):
    body = {"project": PROJECT, "schema": SENTIMENT_EN, "hostname": hostname, "access_token": SETUP_TOKEN}
    assert client.post("/setup", json=body).status_code == 200


# --- the live backend: gunicorn with every secret set ------------------------------------------------
@pytest.fixture(scope="module")
def secured_backend(tmp_path_factory, default_model_path, model_cache_dir):  # noqa: F811 - conftest fixtures
    from tests.integration.services import backend_process

    log_path = tmp_path_factory.mktemp("secured_backend") / "backend.log"
    env = {
        "MODEL_DIR": str(tmp_path_factory.mktemp("secured_store")), "CACHE_DIR": str(model_cache_dir),
        "WORKERS": "1", "THREADS": "4", "LLM_THREADS": "1", "JOB_RETRIES": "0", "LABEL_STUDIO_TIMEOUT_S": "2",
        "LOG_LEVEL": "DEBUG", "BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD, "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LABEL_STUDIO_API_KEY": LS_API_KEY, "LLM_API_KEY": LLM_API_KEY,
    }
    with backend_process(env, log_path) as url:
        yield url, log_path


def job_state(session, url: str) -> str | None:
    answer = session.get(f"{url}/preannotate/status?project=3", headers=RIGHT, timeout=10)
    return answer.json().get("state") if answer.ok else None


@pytest.mark.integration
def test_live_gunicorn_asks_for_credentials_and_logs_no_secret(secured_backend, recording_server, figures_line):
    url, log_path = secured_backend
    session = requests.Session()
    statuses = []
    openapi_paths = requests.get(f"{url}/openapi.json", headers=RIGHT, timeout=10).json()["paths"]
    for path, operations in openapi_paths.items():
        for method in (m for m in operations if m in ("get", "post", "put", "patch", "delete")):
            without = session.request(method.upper(), url + path, timeout=30, json=request_body(path))
            statuses.append(without.status_code)
            if path in ("/health", "/"):
                assert without.status_code == 200
            else:
                assert without.status_code == 401 and set(without.json()) == {"error", "hint"}, (method, path)
    answers = {}
    for method, path, headers, body in [
        ("POST", "/setup", RIGHT, {"project": PROJECT, "schema": SENTIMENT_EN, "hostname": recording_server.url,
                                   "access_token": SETUP_TOKEN}),
        ("POST", "/predict", RIGHT, {"project": PROJECT, "tasks": [{"id": 1, "data": {"text": recording_server.url}}]}),
        ("POST", "/webhook", {"X-Webhook-Secret": WEBHOOK_SECRET},
         {"action": "TASKS_CREATED", "project": PROJECT_BODY, "tasks": [{"id": 4, "data": {"text": "ok"}}]}),
        ("POST", "/webhook", {"Authorization": f"Bearer {WEBHOOK_SECRET}x"}, {"action": "START_TRAINING"}),
        ("POST", "/setup", {"Authorization": basic(USER, PASSWORD + "!")}, {"schema": SENTIMENT_EN}),
        ("GET", "/preannotate/status?project=3", RIGHT, None), ("GET", "/metrics", RIGHT, None),
    ]:
        answer = session.request(method, url + path, headers=headers, json=body, timeout=120)
        assert answer.status_code < 500, (method, path, answer.status_code)
        answers[f"#{len(answers)} {method} {path} ({answer.status_code})"] = answer.text + str(answer.headers)
    # the background job runs and fails against the "Label Studio" that answers 401: wait until it ended
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and job_state(session, url) not in ("done", "failed", "rejected"):
        time.sleep(0.2)
    assert recording_server.requests, "the job never called Label Studio"
    assert requests.get(f"{url}/health", timeout=5).json()["status"] == "UP"
    log_text = log_path.read_text(errors="replace")
    assert leaks({"gunicorn's log": log_text, **answers}) == []
    assert not any(SETUP_TOKEN in r[1] for r in recording_server.requests), "no token in a URL"
    figures_line(f"security live: {len(statuses)} unauthenticated requests on {len(openapi_paths)} paths "
                 f"({statuses.count(401)} × 401), {len(log_text.splitlines())} log lines (DEBUG): 0 secrets found")
