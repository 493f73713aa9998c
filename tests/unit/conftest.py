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


@pytest.fixture
def crash_writing_manifest(monkeypatch):
    """`crash_writing_manifest(error)`: every version written from now on dies after its data
    files, right before its manifest — a process killed mid-write."""
    from ml_backend import slm_model

    write = slm_model._write_synced

    def arm(error: BaseException) -> None:
        def crash_on_manifest(path, payload):
            if path.name == slm_model.MANIFEST_FILE:
                raise error
            write(path, payload)

        monkeypatch.setattr(slm_model, "_write_synced", crash_on_manifest)

    return arm
