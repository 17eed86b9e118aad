"""Providers: upstream statuses classified, spend limits, retry timing, the mock provider, keys from secret files."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from completions.providers import ProviderConfig
from completions.providers.base import error_from_response, retry_after_seconds
from completions.providers.mock import MockProvider
from completions.services import retry_countdown

pytestmark = pytest.mark.django_db


# -- provider errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"),
    [(400, False), (401, False), (404, False), (408, True), (429, True), (500, True), (529, True)],
)
def test_upstream_statuses_are_classified(status: int, transient: bool) -> None:
    assert error_from_response(status, {}, {}).transient is transient


def test_spend_limit_429_is_permanent_and_upstream_message_is_kept() -> None:
    body = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
    error = error_from_response(429, body, {}, spend_limit=True)
    assert error.transient is False
    assert error.as_error() == {
        "message": "You exceeded your current quota",
        "transient": False,
        "upstream": body,
    }


def test_retry_after_prefers_milliseconds_and_backoff_honours_it() -> None:
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_countdown(attempt=1, retry_after=5.0) >= 5.0
    assert all(0 < retry_countdown(attempt=n, retry_after=None) <= 1.0 for n in range(1, 10))


# -- mock provider -----------------------------------------------------------------------------


def mock(**options: Any) -> MockProvider:
    return MockProvider(
        ProviderConfig.build(
            name="mock",
            kind="mock",
            base_url="",
            api_key_env="",
            default_key_env="",
            timeout=10,
            options={"latency_ms": 0, "chunk_ms": 0, **options},
        )
    )


def test_mock_streams_openai_chunks_with_a_final_usage_chunk() -> None:
    payload = {
        "model": "m",
        "max_tokens": 4,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    chunks = list(mock().stream_objects(payload))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == mock().complete(payload).body["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    sse_events = list(mock().stream(payload))
    assert sse_events[-1].data == "[DONE]" and len(sse_events) == len(chunks) + 1


def test_mock_streams_anthropic_events_in_order() -> None:
    events = list(mock(format="anthropic").stream_objects({"model": "m", "max_tokens": 3, "messages": []}))
    names = [e["event"] for e in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("content_block_delta") == 3
    assert events[-2]["data"]["usage"]["output_tokens"] == 3


def test_retry_timing_falls_back_to_the_rate_limit_reset_headers() -> None:
    from datetime import datetime

    from completions.providers.base import parse_duration

    assert (
        parse_duration("6m0s") == 360
        and parse_duration("12ms") == 0.012
        and parse_duration("1h2m3.5s") == 3723.5
    )
    assert parse_duration("soon") is None
    assert (
        retry_after_seconds({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}) == 360
    )
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 30, UTC).isoformat()
    assert 28 <= (retry_after_seconds({"anthropic-ratelimit-tokens-reset": later}) or 0) <= 30
    assert retry_after_seconds({"retry-after": "2", "x-ratelimit-reset-tokens": "6m0s"}) == 2


def test_provider_keys_can_come_from_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "openai-key"
    secret.write_text("sk-from-a-file\n")
    monkeypatch.delenv("FILED_API_KEY", raising=False)
    monkeypatch.setenv("FILED_API_KEY_FILE", str(secret))
    config = ProviderConfig.build(
        name="p",
        kind="openai",
        base_url="",
        api_key_env="FILED_API_KEY",
        default_key_env="",
        timeout=5,
        options={},
    )
    assert config.api_key == "sk-from-a-file"
