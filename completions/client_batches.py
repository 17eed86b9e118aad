"""Clients' batches: the OpenAI Batch API (files, batches, output files) and Anthropic's Message
Batches, served by the balancer itself.

A batch's lines become requests of the batch class (CompletionRequest.client_batch, custom_id)
whose deadline (max_wait) is the batch's completion window: each goes the cheapest way that
fits in time — a provider batch, flex, or realtime (completions.tiers, completions.batching) —
under every limit a request has. The batch's state is read from its requests: in progress while
any waits or runs; then ended, and its results are assembled in the provider's own format (an
OpenAI output file and errors file, stored once; Anthropic's JSONL results). Cancelling it
cancels its requests still waiting; those running finish and are in its results.

All of a batch's lines are checked before any is queued (a 400 names the first bad line). A line
refused as it is queued (its key's budget or rate, say) is in the errors with the reason. A key
sees only its own files and batches. Sizes: BALANCER_BATCH_FILE_MAX_BYTES per file or body,
BALANCER_CLIENT_BATCH_MAX_LINES lines per batch, and the key's cap on waiting requests.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from completions import rows
from completions.models import (
    ApiKey,
    BatchFile,
    ClientBatch,
    CompletionRequest,
    CompletionStatus,
    ModelGroup,
    Operation,
    Priority,
    ServedModel,
)
from completions.routing import CostExceedsLimit, ModelNotAllowed
from completions.services import (
    InvalidPayload,
    KeyQueueFull,
    KeyRateExceeded,
    LimiterUnavailable,
    completion_request_cancel,
    completion_request_create,
    key_queue_cap,
)
from completions.spend import BudgetExceeded
from completions.tiers import TierNotOffered
from completions.tokens import embedding_input_problem, output_cap_problem
from ratelimit.lines import key_quota_of

logger = logging.getLogger(__name__)

# OpenAI's batch endpoints -> the operation each line is.
ENDPOINTS = {
    "/v1/chat/completions": Operation.CHAT,
    "/v1/responses": Operation.RESPONSES,
    "/v1/embeddings": Operation.EMBEDDINGS,
}
WINDOWS = {"24h": 86400}
# How an OpenAI errors file names a request that ended without an answer.
ENDED_CODES: dict[str, str] = {
    CompletionStatus.EXPIRED: "batch_expired",
    CompletionStatus.CANCELLED: "batch_cancelled",
}


class BatchInvalid(Exception):
    """A batch that cannot be accepted (a bad line, too many, a file that is not a batch input):
    nothing was queued."""


@dataclass(frozen=True)
class Line:
    custom_id: str
    body: dict[str, Any]
    served: ServedModel
    group: ModelGroup | None


# Resolves a line's model name for its key and API (raises the API's 404 when it is not served).
Resolver = Callable[[str], tuple[ServedModel, ModelGroup | None]]


def file_id(file: BatchFile) -> str:
    return f"file-{file.id.hex}"


def batch_id(batch: ClientBatch) -> str:
    return f"{'msgbatch_' if batch.kind == 'anthropic' else 'batch_'}{batch.id.hex}"


def parse_id(value: str, prefix: str) -> uuid.UUID | None:
    if not value.startswith(prefix):
        return None
    try:
        return uuid.UUID(hex=value[len(prefix) :])
    except ValueError:
        return None


def batch_file_create(*, api_key: ApiKey, content: bytes, filename: str, purpose: str = "batch") -> BatchFile:
    if len(content) > settings.BALANCER_BATCH_FILE_MAX_BYTES:
        raise BatchInvalid(
            f"The file is {len(content)} bytes; the limit is {settings.BALANCER_BATCH_FILE_MAX_BYTES}."
        )
    return BatchFile.objects.create(
        api_key=api_key, content=content, size=len(content), filename=filename[:255], purpose=purpose
    )


def openai_lines(content: bytes, endpoint: str, resolve: Resolver) -> list[Line]:
    """The lines of an OpenAI batch input file, each checked (BatchInvalid names the first bad one)."""
    if endpoint not in ENDPOINTS:
        raise BatchInvalid(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {endpoint!r}.")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchInvalid("The input file is not UTF-8 text.") from None
    lines: list[Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            raise BatchInvalid(f"Line {number} is not JSON.") from None
        if not isinstance(item, dict):
            raise BatchInvalid(f"Line {number} is not a JSON object.")
        if item.get("method") != "POST" or item.get("url") != endpoint:
            raise BatchInvalid(
                f"Line {number}: method must be POST and url {endpoint}, as the batch's endpoint."
            )
        lines.append(_line(number, item.get("custom_id"), item.get("body"), ENDPOINTS[endpoint], resolve))
    return _checked(lines)


def anthropic_lines(requests: Any, resolve: Resolver) -> list[Line]:
    """The requests of a Message Batches body, each checked (BatchInvalid names the first bad one)."""
    if not isinstance(requests, list):
        raise BatchInvalid("requests: a list of {custom_id, params} is required.")
    lines = []
    for number, item in enumerate(requests, start=1):
        if not isinstance(item, dict):
            raise BatchInvalid(f"requests[{number - 1}] is not an object.")
        params = item.get("params")
        if isinstance(params, dict) and params.get("max_tokens") is None:
            raise BatchInvalid(
                f"requests[{number - 1}].params.max_tokens: a whole number of tokens is required."
            )
        lines.append(_line(number, item.get("custom_id"), params, Operation.CHAT, resolve))
    return _checked(lines)


def _line(number: int, custom_id: Any, body: Any, operation: str, resolve: Resolver) -> Line:
    where = f"Line {number}"
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 64:
        raise BatchInvalid(f"{where}: custom_id must be a string of 1 to 64 characters.")
    if not isinstance(body, dict):
        raise BatchInvalid(f"{where}: its body must be a JSON object.")
    if body.get("stream"):
        raise BatchInvalid(f"{where}: a batch's requests are not streamed.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BatchInvalid(f"{where}: model: a model name (a string) is required.")
    problem = (
        embedding_input_problem(body.get("input"))
        if operation == Operation.EMBEDDINGS
        else output_cap_problem(body)
    )
    if problem:
        raise BatchInvalid(f"{where}: {problem}")
    try:
        served, group = resolve(model)
    except Exception as exc:  # the API's 404, with its message
        detail = getattr(exc, "detail", exc)
        raise BatchInvalid(f"{where}: {detail}") from None
    return Line(custom_id, body, served, group)


def _checked(lines: list[Line]) -> list[Line]:
    if not lines:
        raise BatchInvalid("The batch has no requests.")
    if len(lines) > settings.BALANCER_CLIENT_BATCH_MAX_LINES:
        raise BatchInvalid(
            f"The batch has {len(lines)} requests; the limit is {settings.BALANCER_CLIENT_BATCH_MAX_LINES}."
        )
    seen: set[str] = set()
    for line in lines:
        if line.custom_id in seen:
            raise BatchInvalid(
                f"custom_id {line.custom_id!r} appears twice: each must be unique in its batch."
            )
        seen.add(line.custom_id)
    return lines


def client_batch_create(
    *,
    api_key: ApiKey,
    kind: str,
    lines: list[Line],
    operation: str = Operation.CHAT,
    endpoint: str = "",
    window_seconds: int = 86400,
    input_file: BatchFile | None = None,
    metadata: Any = None,
) -> ClientBatch:
    """Accept a batch: every line queued as a batch-class request with the window as its
    deadline. Raises KeyQueueFull when its key cannot have that many more requests waiting (none
    is queued then); a line refused as it is queued is recorded in `refused`."""
    cap = key_queue_cap(key_quota_of(api_key))
    if rows.queued_of_key(api_key.pk, up_to=cap) + len(lines) > cap:
        raise KeyQueueFull(cap)
    batch = ClientBatch.objects.create(
        api_key=api_key,
        kind=kind,
        endpoint=endpoint,
        window_seconds=window_seconds,
        input_file=input_file,
        metadata=metadata,
        total=len(lines),
    )
    refused = []
    for line in lines:
        try:
            completion_request_create(
                api_key=api_key,
                served_model=line.served,
                payload=line.body,
                max_wait=float(window_seconds),
                group=line.group,
                priority=Priority.BATCH,
                operation=operation,
                client_batch=batch,
                custom_id=line.custom_id,
                queue_checked=True,  # for the whole batch, above
            )
        except BudgetExceeded as exc:
            refused.append(
                {"custom_id": line.custom_id, "status": 429, "code": "budget_exceeded", "message": str(exc)}
            )
        except (KeyRateExceeded, LimiterUnavailable) as exc:
            message = str(exc) or "This key's rate cannot be checked right now."
            refused.append(
                {
                    "custom_id": line.custom_id,
                    "status": 429,
                    "code": "rate_limit_exceeded",
                    "message": message,
                }
            )
        except (InvalidPayload, CostExceedsLimit, ModelNotAllowed, TierNotOffered) as exc:
            refused.append(
                {"custom_id": line.custom_id, "status": 400, "code": "invalid_request", "message": str(exc)}
            )
    if refused:
        ClientBatch.objects.filter(id=batch.id).update(refused=refused)
        batch.refused = refused
    logger.info(
        "client batch %s: %d request(s) queued, %d refused", batch.id, len(lines) - len(refused), len(refused)
    )
    return batch


@dataclass(frozen=True)
class Counts:
    waiting: int  # queued or running
    succeeded: int
    failed: int
    cancelled: int
    expired: int
    refused: int

    @property
    def ended(self) -> bool:
        return self.waiting == 0


def client_batch_counts(batch: ClientBatch) -> Counts:
    by_status = dict(
        CompletionRequest.objects.filter(client_batch=batch)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    return Counts(
        waiting=by_status.get(CompletionStatus.QUEUED, 0) + by_status.get(CompletionStatus.RUNNING, 0),
        succeeded=by_status.get(CompletionStatus.SUCCEEDED, 0),
        failed=by_status.get(CompletionStatus.FAILED, 0),
        cancelled=by_status.get(CompletionStatus.CANCELLED, 0),
        expired=by_status.get(CompletionStatus.EXPIRED, 0),
        refused=len(batch.refused or []),
    )


def client_batch_ended(batch: ClientBatch, counts: Counts) -> ClientBatch:
    """Mark a batch whose requests have all ended as ended (once), writing an OpenAI batch's
    output and errors files then."""
    if batch.ended_at is not None or not counts.ended:
        return batch
    if batch.kind == "openai":
        output, errors = _openai_results(batch)
        batch.output_file = batch_file_create(
            api_key=batch.api_key,
            content=output,
            filename=f"{batch_id(batch)}_output.jsonl",
            purpose="batch_output",
        )
        if errors:
            batch.error_file = batch_file_create(
                api_key=batch.api_key,
                content=errors,
                filename=f"{batch_id(batch)}_error.jsonl",
                purpose="batch_output",
            )
    batch.ended_at = timezone.now()
    updated = ClientBatch.objects.filter(id=batch.id, ended_at__isnull=True).update(
        ended_at=batch.ended_at, output_file=batch.output_file, error_file=batch.error_file
    )
    if not updated:  # another process ended it first: its files stand, these go
        for file in (batch.output_file, batch.error_file):
            if file is not None:
                file.delete()
        batch.refresh_from_db()
    return batch


def client_batch_cancel(batch: ClientBatch) -> int:
    """Cancel what of a batch still waits in line; returns how many."""
    if batch.cancelled_at is None:
        batch.cancelled_at = timezone.now()
        ClientBatch.objects.filter(id=batch.id).update(cancelled_at=batch.cancelled_at)
    cancelled = 0
    waiting = CompletionRequest.objects.select_related("api_key").filter(
        client_batch=batch, status=CompletionStatus.QUEUED
    )
    for request in waiting:
        cancelled += completion_request_cancel(
            request=request, reason="Cancelled with its batch.", retries_too=True
        )
    return cancelled


def _requests(batch: ClientBatch) -> list[CompletionRequest]:
    return list(CompletionRequest.objects.filter(client_batch=batch).order_by("created_at"))


def _openai_results(batch: ClientBatch) -> tuple[bytes, bytes]:
    output, errors = [], []
    for request in _requests(batch):
        rid = str(request.id)
        line: dict[str, Any] = {"id": f"batch_req_{request.id.hex}", "custom_id": request.custom_id}
        if request.status == CompletionStatus.SUCCEEDED:
            line["response"] = {
                "status_code": request.upstream_status or 200,
                "request_id": rid,
                "body": request.response,
            }
            line["error"] = None
            output.append(line)
            continue
        error = request.error or {}
        upstream = error.get("upstream")
        if request.status == CompletionStatus.FAILED and request.upstream_status:
            line["response"] = {"status_code": request.upstream_status, "request_id": rid, "body": upstream}
            line["error"] = None
        else:
            code = ENDED_CODES.get(request.status, "server_error")
            line["response"] = None
            line["error"] = {"code": code, "message": error.get("message") or request.status}
        errors.append(line)
    for refused in batch.refused or []:
        errors.append(
            {
                "id": f"batch_req_{uuid.uuid4().hex}",
                "custom_id": refused["custom_id"],
                "response": None,
                "error": {"code": refused["code"], "message": refused["message"]},
            }
        )
    return _jsonl(output), _jsonl(errors)


def anthropic_results(batch: ClientBatch) -> bytes:
    """An ended Message Batch's results, one JSON line per request."""
    lines = []
    for request in _requests(batch):
        if request.status == CompletionStatus.SUCCEEDED:
            result: dict[str, Any] = {"type": "succeeded", "message": request.response}
        elif request.status == CompletionStatus.CANCELLED:
            result = {"type": "canceled"}
        elif request.status == CompletionStatus.EXPIRED:
            result = {"type": "expired"}
        else:
            result = {"type": "errored", "error": _anthropic_error(request)}
        lines.append({"custom_id": request.custom_id, "result": result})
    for refused in batch.refused or []:
        kind = "rate_limit_error" if refused["status"] == 429 else "invalid_request_error"
        error = {"type": "error", "error": {"type": kind, "message": refused["message"]}}
        lines.append({"custom_id": refused["custom_id"], "result": {"type": "errored", "error": error}})
    return _jsonl(lines)


def _anthropic_error(request: CompletionRequest) -> dict[str, Any]:
    error = request.error or {}
    upstream = error.get("upstream")
    if isinstance(upstream, dict) and upstream.get("type") == "error":
        return upstream
    return {
        "type": "error",
        "error": {"type": "api_error", "message": error.get("message") or request.status},
    }


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
