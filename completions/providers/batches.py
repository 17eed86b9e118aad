"""The providers' batch APIs, through their official SDKs: submit a batch of request bodies, see
how far it is, cancel it, read its results — each provider's shapes turned into the same few.

OpenAI: a JSONL file (`files.create(purpose="batch")`, lines `{custom_id, method, url, body}`),
`batches.create/retrieve/cancel`, results in its output and error files (`files.content`); a
cancelled batch's output holds what it finished, and leaves the rest out. Anthropic: one
`messages.batches.create(requests=[{custom_id, params}])`, `retrieve`, `cancel`, `results`
(`succeeded`, `errored`, `canceled`, `expired` per item).

Every byte a provider returns passes the provider's scrubber, as a call's does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from completions.providers.base import (
    CompletionResult,
    ProviderError,
    cached_tokens,
    error_from_response,
    missing_key_error,
)
from completions.providers.sdk import SDKProvider

T = TypeVar("T")

# The operation a batch serves -> OpenAI's endpoint for it (Anthropic's batches serve messages).
OPENAI_ENDPOINTS = {
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
    "embeddings": "/v1/embeddings",
}


@dataclass(frozen=True)
class BatchProgress:
    """Where a provider batch stands: `ended` (its results can be read), `failed` (it will
    process nothing: `error` says why), else still processing; `done` of `total` items finished."""

    status: str
    ended: bool
    failed: bool
    total: int
    done: int
    error: str = ""


@dataclass(frozen=True)
class ItemResult:
    """One item's result: its answer, or its error; neither: it was not processed (cancelled,
    expired, left out) and may run elsewhere without being paid twice."""

    custom_id: str
    result: CompletionResult | None = None
    error: ProviderError | None = None


def batch_api(provider: Any) -> BatchAPI | None:
    """The batch API of a provider client (None: its kind has none)."""
    from completions.providers.anthropic import AnthropicProvider
    from completions.providers.openai import OpenAIProvider

    if isinstance(provider, OpenAIProvider):
        return OpenAIBatches(provider)
    if isinstance(provider, AnthropicProvider):
        return AnthropicBatches(provider)
    return None


class BatchAPI:
    def __init__(self, provider: SDKProvider) -> None:
        self.provider = provider

    def submit(self, items: list[tuple[str, dict[str, Any]]], operation: str, label: str) -> str:
        """Send `items` (custom_id, body) as one batch; returns the provider's batch id."""
        raise NotImplementedError

    def progress(self, batch_id: str) -> BatchProgress:
        raise NotImplementedError

    def cancel(self, batch_id: str) -> None:
        raise NotImplementedError

    def results(self, batch_id: str) -> list[ItemResult]:
        """An ended batch's results (items it did not process are absent, or have neither)."""
        raise NotImplementedError

    def _sdk(self, call: Callable[[Any], T]) -> T:
        """`call(client)`, its SDK's errors turned into ProviderError (a 4xx permanent)."""
        provider = self.provider
        if provider.client is None:
            raise missing_key_error(provider.config)
        sdk = provider.sdk
        try:
            return call(provider.client)
        except sdk.APIStatusError as exc:
            body = provider._error_body(exc.response)
            raise error_from_response(
                exc.status_code, body, provider.scrub.value(dict(exc.response.headers))
            ) from None
        except sdk.APIConnectionError as exc:
            raise ProviderError(
                provider.scrub.text(f"could not reach upstream: {exc}"), transient=True, fault="down"
            ) from None

    def _answer(self, custom_id: str, status: int, body: Any) -> ItemResult:
        """An item's answer as a call's: a 200 with its usage, or the error it was."""
        body = self.provider.scrub.value(body)
        if status == 200 and isinstance(body, dict):
            input_tokens, output_tokens = self.provider.usage(body)
            return ItemResult(
                custom_id,
                result=CompletionResult(
                    body=body,
                    status=200,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cached_input_tokens=cached_tokens(body.get("usage")),
                ),
            )
        return ItemResult(custom_id, error=error_from_response(status, body, {}))


class OpenAIBatches(BatchAPI):
    def submit(self, items: list[tuple[str, dict[str, Any]]], operation: str, label: str) -> str:
        endpoint = OPENAI_ENDPOINTS[operation]
        data = "".join(
            json.dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": body}) + "\n"
            for cid, body in items
        ).encode()
        uploaded = self._sdk(lambda c: c.files.create(file=(f"{label}.jsonl", data), purpose="batch"))
        batch = self._sdk(
            lambda c: c.batches.create(
                input_file_id=uploaded.id,
                endpoint=endpoint,
                completion_window="24h",
                metadata={"balancer_batch": label},
            )
        )
        return str(batch.id)

    def progress(self, batch_id: str) -> BatchProgress:
        batch = self._sdk(lambda c: c.batches.retrieve(batch_id))
        counts = batch.request_counts
        total = counts.total if counts else 0
        done = (counts.completed + counts.failed) if counts else 0
        status = str(batch.status)
        error = ""
        if batch.errors is not None and batch.errors.data:
            error = "; ".join(f"{e.code}: {e.message}" for e in batch.errors.data)
        return BatchProgress(
            status=status,
            ended=status in ("completed", "cancelled", "expired", "failed"),
            failed=status == "failed",
            total=total,
            done=done,
            error=self.provider.scrub.text(error),
        )

    def cancel(self, batch_id: str) -> None:
        self._sdk(lambda c: c.batches.cancel(batch_id))

    def results(self, batch_id: str) -> list[ItemResult]:
        batch = self._sdk(lambda c: c.batches.retrieve(batch_id))
        found: list[ItemResult] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                found.extend(
                    self._line(json.loads(line))
                    for line in self._content(file_id).splitlines()
                    if line.strip()
                )
        return found

    def _content(self, file_id: str) -> str:
        return self._sdk(lambda c: str(c.files.content(file_id).text))

    def _line(self, line: dict[str, Any]) -> ItemResult:
        custom_id = str(line.get("custom_id"))
        response = line.get("response")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            return self._answer(custom_id, response["status_code"], response.get("body"))
        # No response: not processed (expired, cancelled).
        return ItemResult(custom_id)


class AnthropicBatches(BatchAPI):
    def submit(self, items: list[tuple[str, dict[str, Any]]], operation: str, label: str) -> str:
        requests = [{"custom_id": cid, "params": body} for cid, body in items]
        batch = self._sdk(lambda c: c.messages.batches.create(requests=requests))
        return str(batch.id)

    def progress(self, batch_id: str) -> BatchProgress:
        batch = self._sdk(lambda c: c.messages.batches.retrieve(batch_id))
        counts = batch.request_counts
        done = counts.succeeded + counts.errored + counts.canceled + counts.expired
        return BatchProgress(
            status=str(batch.processing_status),
            ended=batch.processing_status == "ended",
            failed=False,
            total=done + counts.processing,
            done=done,
        )

    def cancel(self, batch_id: str) -> None:
        self._sdk(lambda c: c.messages.batches.cancel(batch_id))

    def results(self, batch_id: str) -> list[ItemResult]:
        lines: Iterable[Any] = self._sdk(lambda c: list(c.messages.batches.results(batch_id)))
        found = []
        for line in lines:
            data = line.model_dump(mode="json") if hasattr(line, "model_dump") else dict(line)
            result = data.get("result") or {}
            kind = result.get("type")
            custom_id = str(data.get("custom_id"))
            if kind == "succeeded":
                found.append(self._answer(custom_id, 200, result.get("message")))
            elif kind == "errored":
                error = result.get("error") or {}
                inner = error.get("error")
                if not isinstance(inner, dict):
                    inner = error
                # Anthropic names the error, not its status: a request's own fault is a 400.
                status = 400 if inner.get("type") == "invalid_request_error" else 500
                found.append(self._answer(custom_id, status, error))
            else:  # canceled, expired: not processed
                found.append(ItemResult(custom_id))
        return found
