"""Annotator accounts the way a team adds them in Label Studio 1.23.2: the organization's invite
link (`GET /api/invite`), then the sign-up form in a browser session (CSRF cookie + form post).
The session stays logged in, so it calls the API as that annotator (`/api/projects/{id}/next`)."""

from __future__ import annotations

import requests


def sign_up_annotator(label_studio: str, admin_token: str, email: str, password: str) -> requests.Session:
    invite = requests.get(f"{label_studio}/api/invite", headers={"Authorization": f"Token {admin_token}"},
                          timeout=30)
    invite.raise_for_status()
    signup_url = label_studio + invite.json()["invite_url"]
    session = requests.Session()
    session.get(signup_url, timeout=30).raise_for_status()  # sets the csrftoken cookie
    answer = session.post(signup_url, timeout=60, headers={"Referer": signup_url}, data={
        "email": email, "password": password, "csrfmiddlewaretoken": session.cookies.get("csrftoken", ""),
    })
    answer.raise_for_status()
    whoami = session.get(f"{label_studio}/api/current-user/whoami", timeout=30)
    if whoami.status_code != 200 or whoami.json().get("email") != email:
        raise AssertionError(f"sign-up of {email} did not log in: {answer.status_code} {answer.url}")
    return session


def annotate(session: requests.Session, label_studio: str, task_id: int, result: list[dict]) -> dict:
    """Submit an annotation as the session's annotator, as the labeling page does (session cookie +
    CSRF header): Label Studio records that annotator as `completed_by` and sends its webhook."""
    answer = session.post(
        f"{label_studio}/api/tasks/{task_id}/annotations/", json={"result": result}, timeout=60,
        headers={"X-CSRFToken": session.cookies.get("csrftoken", ""), "Referer": label_studio},
    )
    if answer.status_code != 201:
        raise AssertionError(f"annotation of task {task_id} refused: HTTP {answer.status_code} {answer.text[:300]}")
    return answer.json()
