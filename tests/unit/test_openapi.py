"""The OpenAPI description served at /openapi.json names exactly the routes the app registers."""

from __future__ import annotations

from ml_backend.openapi import openapi_description

IMPLICIT_METHODS = {"HEAD", "OPTIONS"}  # Werkzeug adds them to every rule


def registered_routes(app) -> set[tuple[str, str]]:
    return {
        (rule.rule, method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - IMPLICIT_METHODS
    }


def described_routes(description: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in description["paths"].items() for method in item}


def test_every_registered_route_is_described_and_every_described_route_exists(app):
    registered, described = registered_routes(app), described_routes(openapi_description())
    assert sorted(registered - described) == [], "routes missing from ml_backend/openapi.py"
    assert sorted(described - registered) == [], "described routes the app does not register"


def test_the_description_is_served_and_is_openapi_3(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    served = response.get_json()
    assert served == openapi_description()
    assert served["openapi"].startswith("3.")


def test_every_error_answer_is_described_as_the_error_body():
    for path, item in openapi_description()["paths"].items():
        for method, operation in item.items():
            errors = {code: answer for code, answer in operation["responses"].items() if int(code) >= 400}
            assert errors, f"{method.upper()} {path} describes no error answer"
            for answer in errors.values():
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_schemathesis_accepts_the_description():
    import schemathesis

    schema = schemathesis.openapi.from_dict(openapi_description())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.path, op.method.lower()) for op in operations} == described_routes(openapi_description())
