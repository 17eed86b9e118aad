"""The provider interface and the one error type every provider raises."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from completions.credentials import base_url_problem, key_variable_problem
from completions.sse import Event

# Statuses worth another attempt: throttled, conflicted, timed out, or the upstream's own fault.
TRANSIENT_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class ProviderConfig:
    """What a worker needs to call one provider for one model. Hashable, so it keys the client cache.

    `api_key` is read from the environment at call time and is never persisted anywhere.
    """

    name: str
    kind: str
    base_url: str | None
    api_key: str | None = field(repr=False)
    api_key_env: str = ""
    timeout: float = 600.0
    options: tuple[tuple[str, Any], ...] = ()
    # Why the key was not read (completions/credentials.py), or "".
    refused: str = ""
    # The largest reply accepted (BALANCER_MAX_REPLY_BYTES): a bigger one fails the request.
    max_reply_bytes: int = 32 * 1024 * 1024  # as the setting's default

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    @classmethod
    def build(
        cls,
        *,
        name: str,
        kind: str,
        base_url: str,
        api_key_env: str,
        default_key_env: str,
        timeout: float,
        options: Mapping[str, Any],
        max_reply_bytes: int = 32 * 1024 * 1024,
    ) -> ProviderConfig:
        key_env = api_key_env or default_key_env
        # The boundary again, where the secret is read: a row written past the validators (before
        # they existed, or by SQL) still never sends a variable it may not to a URL it may not.
        refused = (key_variable_problem(key_env) if key_env else None) or base_url_problem(base_url)
        return cls(
            name=name,
            kind=kind,
            base_url=base_url or None,
            api_key=read_secret(key_env) if key_env and not refused else None,
            api_key_env=key_env,
            refused=refused or "",
            timeout=timeout,
            options=tuple(sorted((k, _freeze(v)) for k, v in options.items())),
            max_reply_bytes=max_reply_bytes,
        )


def reply_too_large(config: ProviderConfig, size: int | None = None) -> ProviderError:
    """A reply bigger than the balancer stores and relays (the call was made: it is paid)."""
    said = f"{size:,} bytes" if size is not None else f"more than {config.max_reply_bytes:,} bytes"
    message = (
        f"The upstream's reply ({said}) is larger than this balancer accepts "
        f"(BALANCER_MAX_REPLY_BYTES = {config.max_reply_bytes:,}). Ask for less in one request "
        "(fewer inputs or dimensions, base64 embeddings), or have the operator raise the limit."
    )
    return ProviderError(
        message,
        transient=False,
        status=502,
        body={"error": {"type": "reply_too_large", "message": message}},
    )


def read_secret(name: str) -> str | None:
    """A secret from the environment variable `name`, or from the file that `name`_FILE names
    (Docker and Kubernetes secrets). Read when a client is built, never stored."""
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            with open(path) as secret_file:
                return secret_file.read().strip() or None
        except OSError:
            return None
    return None


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass
class CompletionResult:
    body: dict[str, Any]
    status: int
    input_tokens: int | None
    output_tokens: int | None
    headers: dict[str, str] = field(default_factory=dict)
    # The body as the upstream sent it (UTF-8 JSON), when there is one: it is relayed to the
    # waiting client as it is, instead of being encoded again.
    text: str | None = None
    # Of input_tokens, those the provider read from its cache (charged at the cached price).
    cached_input_tokens: int | None = None


def cached_tokens(usage: Any) -> int | None:
    """The cached input tokens a usage report names, in any of the APIs' spellings: OpenAI's chat
    (prompt_tokens_details.cached_tokens), its Responses API (input_tokens_details.cached_tokens)
    and Anthropic's (cache_read_input_tokens)."""
    if not isinstance(usage, dict):
        return None
    for details in ("prompt_tokens_details", "input_tokens_details"):
        found = usage.get(details)
        if isinstance(found, dict) and isinstance(found.get("cached_tokens"), int):
            return int(found["cached_tokens"])
    value = usage.get("cache_read_input_tokens")
    return value if isinstance(value, int) else None


class ProviderError(Exception):
    """An upstream call that did not succeed.

    `transient` says whether another attempt may succeed (429, 5xx, 529, timeouts, connection
    errors); a permanent error (other 4xx, a spend limit, a missing key) fails the request at once
    with the upstream's status and body passed through. `fault` says what the error shows of the
    deployment called, whatever the request: "auth" (its key is missing, refused or out of
    credit), "down" (it cannot be reached), "error" (a 5xx or a timeout), or "" (nothing: the
    request's own fault, or a 429). A model group cools such a deployment down and moves the
    request to another.
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        status: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        fault: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.fault = fault
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def as_error(self) -> dict[str, Any]:
        """The JSON stored on the request and shown to the client."""
        error: dict[str, Any] = {"message": self.message, "transient": self.transient}
        if self.body is not None:
            error["upstream"] = self.body
        return error


class Provider(Protocol):
    def __init__(self, config: ProviderConfig) -> None: ...

    def complete(self, payload: dict[str, Any], operation: str = "chat") -> CompletionResult:
        """Send one request body (the provider's own format) for `operation` ("chat", or
        "responses" and "embeddings" where the provider has them) and return its response.

        Raises ProviderError for anything but a successful response.
        """
        ...

    def stream(self, payload: dict[str, Any], operation: str = "chat") -> Iterator[Event]:
        """Send one streaming request body and yield the provider's server-sent events as they
        arrive, unchanged. Raises ProviderError if the upstream refuses it before streaming;
        closing the generator aborts the upstream call."""
        ...


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """How long the upstream asks us to wait: `retry-after-ms` (OpenAI), else `retry-after`
    (seconds; HTTP-date forms are ignored), else the latest reset of an exhausted rate limit
    (`x-ratelimit-reset-*` durations such as `6m0s`, `anthropic-ratelimit-*-reset` times)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            return max(0.0, float(raw) * scale)
        except ValueError:
            continue
    resets = []
    for name, value in lowered.items():
        if name.startswith("x-ratelimit-reset-"):
            resets.append(parse_duration(value))
        elif name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            resets.append(seconds_until(value))
    found = [r for r in resets if r is not None]
    return max(found) if found else None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: `1s`, `12ms`, `6m0s`, `1h2m3.5s`."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def seconds_until(text: str) -> float | None:
    """Seconds from now until an RFC 3339 time (Anthropic's resets); None if unreadable."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_from_response(
    status: int, body: Any, headers: Mapping[str, str], *, spend_limit: bool = False
) -> ProviderError:
    """Classify an upstream error response. `spend_limit` marks a 429 that waiting cannot fix."""
    message = f"upstream returned HTTP {status}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            message = err["message"]
    transient = (status in TRANSIENT_STATUSES or status >= 500) and not spend_limit
    fault = "auth" if status in (401, 403) or spend_limit else "error" if status >= 500 else ""
    return ProviderError(
        message,
        transient=transient,
        status=status,
        body=body,
        retry_after=retry_after_seconds(headers),
        headers=headers,
        fault=fault,
    )


def missing_key_error(config: ProviderConfig) -> ProviderError:
    if config.refused:
        return ProviderError(
            f"provider {config.name!r} is not called: {config.refused}", transient=False, fault="auth"
        )
    return ProviderError(
        f"provider {config.name!r} has no API key: set the environment variable {config.api_key_env}",
        transient=False,
        fault="auth",
    )


# The providers' own rate-limit headers, and the quota field each one bounds (per minute).
LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "rpm",
    "x-ratelimit-limit-tokens": "tpm",
    "anthropic-ratelimit-requests-limit": "rpm",
    "anthropic-ratelimit-tokens-limit": "tpm",
    "anthropic-ratelimit-input-tokens-limit": "itpm",
    "anthropic-ratelimit-output-tokens-limit": "otpm",
}


def reported_limits(headers: Mapping[str, str]) -> dict[str, float]:
    """The per-minute limits a response's rate-limit headers state ("-1" and junk are ignored)."""
    return {k: v for k, v in _header_numbers(headers, LIMIT_HEADERS).items() if v > 0}


def _header_numbers(headers: Mapping[str, str], names: Mapping[str, str]) -> dict[str, float]:
    """The numeric headers of `names` (header -> our name), under our names; junk is skipped."""
    lowered = {k.lower(): v for k, v in headers.items()}
    out: dict[str, float] = {}
    for name, ours in names.items():
        try:
            out[ours] = float(lowered[name])
        except (KeyError, ValueError):
            continue
    return out


# What the provider's headers say is left in its buckets, by the limiter's bucket names.
REMAINING_HEADERS = {
    "x-ratelimit-remaining-requests": "req",
    "x-ratelimit-remaining-tokens": "tok",
    "anthropic-ratelimit-requests-remaining": "req",
    "anthropic-ratelimit-tokens-remaining": "tok",
    "anthropic-ratelimit-input-tokens-remaining": "in",
    "anthropic-ratelimit-output-tokens-remaining": "out",
}


def reported_remaining(headers: Mapping[str, str]) -> dict[str, float]:
    """What a response's rate-limit headers say is left of each limit ("-1" and junk ignored)."""
    return {k: v for k, v in _header_numbers(headers, REMAINING_HEADERS).items() if v >= 0}
