"""Cost estimates made before a request is dispatched.

For now a character-based estimate: about four characters per token for English text, plus the
chat format's overhead (3 tokens per message and 3 to prime the reply, as OpenAI documents it).
The rate-limit issue replaces the text part with tiktoken where an encoding is available offline.
"""

from __future__ import annotations

import json
import math
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
OUTPUT_CAP_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or a list of parts (text parts, images, tool blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif part is not None:
                # Tool calls/results and other structured parts: their JSON is a fair upper bound.
                pieces.append(json.dumps(part, separators=(",", ":")))
        return "".join(pieces)
    if content is None:
        return ""
    return json.dumps(content, separators=(",", ":"))


def estimate_input_tokens(payload: dict[str, Any]) -> int:
    """Prompt tokens of an OpenAI chat or Anthropic messages body."""
    total = TOKENS_PER_REPLY
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += TOKENS_PER_MESSAGE
            if isinstance(message, dict):
                total += text_tokens(_content_text(message.get("content")))
                for key in ("name", "tool_calls"):
                    if key in message:
                        total += text_tokens(_content_text(message[key]))
    if "system" in payload:  # Anthropic puts the system prompt beside the messages.
        total += TOKENS_PER_MESSAGE + text_tokens(_content_text(payload["system"]))
    if "tools" in payload:
        total += text_tokens(json.dumps(payload["tools"], separators=(",", ":")))
    return total


def requested_output_cap(payload: dict[str, Any]) -> int | None:
    """The output cap the request names, if any."""
    for key in OUTPUT_CAP_FIELDS:
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
