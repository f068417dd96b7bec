"""Shared fixtures: the embedded model is loaded once per test session (it takes seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, fresh from its converted folder."""
    from helpers.models import load_text_model

    return load_text_model("embedded")
