"""What the OpenAI and Anthropic providers share: calling an official SDK client with the
caller's request body passed through unchanged, and turning SDK exceptions into ProviderError."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2

from completions import sse
from completions.providers.base import (
    CompletionResult,
    ProviderConfig,
    ProviderError,
    cached_tokens,
    error_from_response,
    missing_key_error,
    reply_too_large,
)
from completions.providers.scrub import Scrubber
from completions.sse import Event


class SDKProvider:
    """Subclasses name the SDK module, the client class, the endpoint path and the usage fields.

    The body goes through `client.post(path, body=…)`, the SDKs' documented way to send a request
    as-is, so fields the SDK's typed methods do not know yet reach the provider too. The SDK's own
    retries are off: retrying is the balancer's job, under its rate limits.
    """

    sdk: Any
    client_class: Any
    path: str
    # Paths of the other operations the provider serves (besides "chat", at `path`).
    paths: dict[str, str] = {}

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.scrub = Scrubber(config.api_key)  # every byte of upstream output passes through it
        self.client = None
        if config.api_key:
            self.client = self.client_class(
                api_key=config.api_key, base_url=config.base_url, timeout=config.timeout, max_retries=0
            )

    def _path(self, operation: str) -> str:
        path = self.path if operation == "chat" else self.paths.get(operation)
        if path is None:
            raise ProviderError(f"provider {self.config.name!r} does not serve {operation}", transient=False)
        return path

    def complete(self, payload: dict[str, Any], operation: str = "chat") -> CompletionResult:
        # Read as a stream (the request is the same), so that a reply past the limit is refused
        # at the limit, not after it is all in memory.
        response = self._post(payload, stream=True, path=self._path(operation))
        try:
            content = self._read_capped(response)
        finally:
            response.close()
        try:
            body, text = self.scrub.json_text(content.decode("utf-8", errors="replace"))
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ProviderError("upstream answered with something other than a JSON object", transient=True)
        input_tokens, output_tokens = self.usage(body)
        return CompletionResult(
            body=body,
            status=response.status_code,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            headers=self.scrub.value(dict(response.headers)),
            text=text,
            cached_input_tokens=cached_tokens(body.get("usage")),
        )

    def _read_capped(self, response: Any) -> bytes:
        limit = self.config.max_reply_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise reply_too_large(self.config, int(declared))
        chunks, size = [], 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise reply_too_large(self.config)
                chunks.append(chunk)
        except (httpx2.TimeoutException, httpx2.TransportError) as exc:
            raise ProviderError(
                f"upstream reply broke off: {exc.__class__.__name__}", transient=True, fault="error"
            ) from None
        return b"".join(chunks)

    def _error_body(self, response: Any) -> Any:
        """An error response's body, scrubbed: its JSON, or {"text": its first 2,000 characters}."""
        raw = response.content.decode("utf-8", errors="replace")
        try:
            return self.scrub.json_text(raw)[0]
        except ValueError:
            return {"text": self.scrub.decoded_text(raw)[:2000]}

    def stream(self, payload: dict[str, Any], operation: str = "chat") -> Iterator[Event]:
        response = self._post(payload, stream=True, path=self._path(operation))
        try:
            yield from self.scrub.events(sse.parse(self.scrub.lines(response.iter_lines())))
        except (httpx2.TimeoutException, httpx2.TransportError) as exc:
            raise ProviderError(
                f"upstream stream broke off: {exc.__class__.__name__}", transient=True, fault="error"
            ) from None
        finally:
            response.close()  # also when the consumer stops early: aborts the upstream call

    def _post(self, payload: dict[str, Any], *, stream: bool, path: str | None = None) -> Any:
        if self.client is None:
            raise missing_key_error(self.config)
        try:
            return self.client.post(path or self.path, body=payload, cast_to=httpx2.Response, stream=stream)
        except self.sdk.APIStatusError as exc:
            body = self._error_body(exc.response)
            raise error_from_response(
                exc.status_code,
                body,
                self.scrub.value(dict(exc.response.headers)),
                spend_limit=self.is_spend_limit(exc, body),
            ) from None
        except self.sdk.APITimeoutError:
            raise ProviderError(
                f"upstream did not answer within {self.config.timeout:g} s", transient=True, fault="error"
            ) from None
        except self.sdk.APIConnectionError as exc:
            raise ProviderError(
                self.scrub.text(f"could not reach upstream: {exc}"), transient=True, fault="down"
            ) from None

    def usage(self, body: dict[str, Any]) -> tuple[int | None, int | None]:
        raise NotImplementedError

    def is_spend_limit(self, exc: Any, body: Any) -> bool:
        return False


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def usage_fields(
    body: dict[str, Any], input_keys: tuple[str, ...], output_key: str
) -> tuple[int | None, int | None]:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None, None
    inputs = [usage[k] for k in input_keys if isinstance(usage.get(k), int)]
    return (sum(inputs) if inputs else None), _int_or_none(usage.get(output_key))
