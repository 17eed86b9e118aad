"""Cost estimates: the input a request reserves, and the output cap whichever field the API uses."""

from __future__ import annotations

import pytest

from completions.tokens import estimate_input_tokens, requested_output_cap

pytestmark = pytest.mark.django_db


# -- cost estimates ----------------------------------------------------------------------------


def test_input_estimate_counts_messages_system_and_tools() -> None:
    base = estimate_input_tokens({"messages": [{"role": "user", "content": "x" * 400}]})
    assert base == 3 + 3 + 100
    with_system = estimate_input_tokens(
        {"system": "y" * 40, "messages": [{"role": "user", "content": "x" * 400}]}
    )
    assert with_system == base + 3 + 10
    parts = estimate_input_tokens(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 400}]}]}
    )
    assert parts == base


def test_output_cap_comes_from_whichever_field_the_api_uses() -> None:
    assert requested_output_cap({"max_tokens": 10}) == 10
    assert requested_output_cap({"max_completion_tokens": 20, "max_tokens": 10}) == 20
    assert requested_output_cap({"max_output_tokens": 30}) == 30
    assert requested_output_cap({"max_tokens": True}) is None
    assert requested_output_cap({}) is None
