"""Fixtures shared by the unit tests (the fake LLM and the plain app are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def bulk_app(settings, keyword_runtime):
    """App factory with background pre-annotation on (no Label Studio is reachable: jobs fail fast)."""
    from ml_backend.app import create_app

    def build(**overrides):
        return create_app(
            settings.model_copy(update={"preannotate_auto": True, "job_retries": 0, **overrides}),
            runtime_loader=lambda: keyword_runtime,
        )

    return build
