"""Anthropic's Messages API, through the official `anthropic` SDK."""

from __future__ import annotations

from typing import Any

import anthropic

from completions.providers.sdk import SDKProvider, usage_fields


class AnthropicProvider(SDKProvider):
    sdk = anthropic
    client_class = anthropic.Anthropic
    path = "/v1/messages"

    def usage(self, body: dict[str, Any]) -> tuple[int | None, int | None]:
        # Cached input tokens count against the input-token limit too.
        return usage_fields(
            body, ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"), "output_tokens"
        )

    def is_spend_limit(self, exc: Any, body: Any) -> bool:
        # Anthropic sends retry-after on rate-limit 429s; a 429 without it is a spend limit.
        return exc.status_code == 429 and "retry-after" not in exc.response.headers
