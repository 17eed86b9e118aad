"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, Groq, Azure OpenAI…), through the
official `openai` SDK."""

from __future__ import annotations

from typing import Any

import openai

from completions.providers.sdk import SDKProvider, usage_fields


class OpenAIProvider(SDKProvider):
    sdk = openai
    client_class = openai.OpenAI
    path = "/chat/completions"
    paths = {"embeddings": "/embeddings", "responses": "/responses"}

    def usage(self, body: dict[str, Any]) -> tuple[int | None, int | None]:
        usage = body.get("usage")
        if isinstance(usage, dict) and "input_tokens" in usage:  # the Responses API's names
            return usage_fields(body, ("input_tokens",), "output_tokens")
        return usage_fields(body, ("prompt_tokens",), "completion_tokens")

    def is_spend_limit(self, exc: Any, body: Any) -> bool:
        # A 429 with code insufficient_quota means the account is out of credit: waiting won't help.
        error = body.get("error") if isinstance(body, dict) else None
        return (
            exc.status_code == 429 and isinstance(error, dict) and error.get("code") == "insufficient_quota"
        )
