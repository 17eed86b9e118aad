"""The Batch APIs the official SDKs call, served by the balancer (completions.client_batches):
OpenAI's `files.create(purpose="batch")`, `files.retrieve/content/list/delete`,
`batches.create/retrieve/cancel/list`; Anthropic's `messages.batches.create/retrieve/list/
cancel/results`. A key sees only its own files and batches (another's is a 404, as one that does
not exist)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from rest_framework import exceptions
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from completions.authentication import api_key_of
from completions.client_batches import ENDPOINTS as BATCH_ENDPOINTS
from completions.client_batches import (
    WINDOWS,
    BatchInvalid,
    Counts,
    anthropic_lines,
    anthropic_results,
    batch_file_create,
    batch_id,
    client_batch_cancel,
    client_batch_counts,
    client_batch_create,
    client_batch_ended,
    file_id,
    openai_lines,
    parse_id,
)
from completions.compat import CompatApi
from completions.compat_schema import BATCH_EXAMPLE, FILE_UPLOAD, MESSAGE_BATCH_EXAMPLE, batch_schema
from completions.errors import retry_after_headers
from completions.models import BatchFile, ClientBatch
from completions.services import KeyQueueFull

LIST_LIMIT_MAX = 100


def _time(at: Any) -> int | None:
    return int(at.timestamp()) if at else None


def _iso(at: Any) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


class BatchApiBase(CompatApi):
    """What the batch views share: the key's own batches and files, found by their public ids."""

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # The SDKs ask for files and results as application/binary: those are sent as they are,
        # and anything else (errors included) as JSON, whatever the Accept header says.
        return super().perform_content_negotiation(request, force=True)

    def own_batch(self, request: Request, public_id: str) -> ClientBatch:
        prefix = "msgbatch_" if self.flavour == "anthropic" else "batch_"
        pk = parse_id(public_id, prefix)
        batch = (
            ClientBatch.objects.select_related("api_key", "input_file", "output_file", "error_file")
            .filter(id=pk, api_key=api_key_of(request), kind=self.flavour)
            .first()
            if pk is not None
            else None
        )
        if batch is None:
            raise exceptions.NotFound(f"No batch {public_id!r}.")
        return batch

    def state(self, batch: ClientBatch) -> tuple[ClientBatch, Counts]:
        counts = client_batch_counts(batch)
        return client_batch_ended(batch, counts), counts

    def accepted(self, create: Any) -> Response | ClientBatch:
        try:
            return create()  # type: ignore[no-any-return]
        except BatchInvalid as exc:
            raise exceptions.ValidationError(str(exc)) from None
        except KeyQueueFull as exc:
            return self.error(429, str(exc), retry_after_headers(exc.retry_after))

    def page(self, request: Request, batches: list[Any], render: Any, after_param: str) -> Response:
        try:
            limit = min(max(int(request.query_params.get("limit", 20)), 1), LIST_LIMIT_MAX)
        except ValueError:
            raise exceptions.ValidationError("limit must be a whole number.") from None
        after = request.query_params.get(after_param)
        if after:
            ids = [batch_id(b) for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        shown = [render(b) for b in batches[:limit]]
        return Response(
            {
                "object": "list",
                "data": shown,
                "has_more": len(batches) > limit,
                "first_id": shown[0]["id"] if shown else None,
                "last_id": shown[-1]["id"] if shown else None,
            }
        )


# -- OpenAI: files ---------------------------------------------------------------------------------


def file_object(file: BatchFile) -> dict[str, Any]:
    return {
        "id": file_id(file),
        "object": "file",
        "bytes": file.size,
        "created_at": _time(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
    }


class FileOwner(BatchApiBase):
    def own_file(self, request: Request, public_id: str) -> BatchFile:
        pk = parse_id(public_id, "file-")
        file = BatchFile.objects.filter(id=pk, api_key=api_key_of(request)).first() if pk else None
        if file is None:
            raise exceptions.NotFound(f"No file {public_id!r}.")
        return file


class FilesApi(FileOwner):
    parser_classes = [MultiPartParser]

    @FILE_UPLOAD
    def post(self, request: Request) -> Response:
        purpose = request.data.get("purpose")
        upload = request.FILES.get("file")
        if purpose != "batch":
            raise exceptions.ValidationError("purpose: only batch files are taken here.")
        if upload is None:
            raise exceptions.ValidationError("file: the batch's JSONL file is required.")
        if upload.size > settings.BALANCER_BATCH_FILE_MAX_BYTES:
            raise exceptions.ValidationError(
                f"file: {upload.size} bytes; the limit is {settings.BALANCER_BATCH_FILE_MAX_BYTES}."
            )
        made = self.accepted(
            lambda: batch_file_create(
                api_key=api_key_of(request), content=upload.read(), filename=upload.name or "batch.jsonl"
            )
        )
        if isinstance(made, Response):
            return made
        return Response(file_object(made))  # type: ignore[arg-type]

    @batch_schema("v1_files_list", "The key's files (inputs and outputs).")
    def get(self, request: Request) -> Response:
        files = BatchFile.objects.filter(api_key=api_key_of(request)).defer("content")[:LIST_LIMIT_MAX]
        return Response({"object": "list", "data": [file_object(f) for f in files], "has_more": False})


class FileDetailApi(FileOwner):
    @batch_schema("v1_files_retrieve", "The file object.")
    def get(self, request: Request, public_id: str) -> Response:
        return Response(file_object(self.own_file(request, public_id)))

    @batch_schema("v1_files_delete", "Deleted.")
    def delete(self, request: Request, public_id: str) -> Response:
        file = self.own_file(request, public_id)
        file.delete()
        return Response({"id": public_id, "object": "file", "deleted": True})


class FileContentApi(FileOwner):
    @batch_schema("v1_files_content", "The file's bytes (JSONL).")
    def get(self, request: Request, public_id: str) -> HttpResponse:
        file = self.own_file(request, public_id)
        return HttpResponse(bytes(file.content), content_type="application/octet-stream")


# -- OpenAI: batches -------------------------------------------------------------------------------


def openai_batch_object(batch: ClientBatch, counts: Counts) -> dict[str, Any]:
    ended = batch.ended_at is not None
    if batch.cancelled_at is not None:
        status = "cancelled" if ended else "cancelling"
    else:
        status = "completed" if ended else "in_progress"
    return {
        "id": batch_id(batch),
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": None,
        "input_file_id": file_id(batch.input_file) if batch.input_file else None,
        "completion_window": "24h",
        "status": status,
        "output_file_id": file_id(batch.output_file) if batch.output_file else None,
        "error_file_id": file_id(batch.error_file) if batch.error_file else None,
        "created_at": _time(batch.created_at),
        "in_progress_at": _time(batch.created_at),
        "expires_at": _time(batch.created_at) + batch.window_seconds,  # type: ignore[operator]
        "completed_at": _time(batch.ended_at) if status == "completed" else None,
        "cancelling_at": _time(batch.cancelled_at),
        "cancelled_at": _time(batch.ended_at) if status == "cancelled" else None,
        "request_counts": {
            "total": batch.total,
            "completed": counts.succeeded,
            "failed": counts.failed + counts.cancelled + counts.expired + counts.refused,
        },
        "metadata": batch.metadata,
    }


class BatchesApi(FileOwner):
    @batch_schema("v1_batches_create", "The batch object (in_progress).", BATCH_EXAMPLE)
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            raise exceptions.ValidationError("The request body must be a JSON object.")
        window = body.get("completion_window")
        if window not in WINDOWS:
            raise exceptions.ValidationError(f"completion_window must be one of {', '.join(WINDOWS)}.")
        endpoint = body.get("endpoint")
        if endpoint not in BATCH_ENDPOINTS:
            raise exceptions.ValidationError(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}.")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise exceptions.ValidationError("metadata must be an object.")
        input_file = self.own_file(request, str(body.get("input_file_id") or ""))
        if input_file.purpose != "batch":
            raise exceptions.ValidationError("input_file_id must name a file uploaded with purpose batch.")

        def create() -> ClientBatch:
            lines = openai_lines(
                bytes(input_file.content), str(endpoint), lambda m: self.model_named(request, m)
            )
            return client_batch_create(
                api_key=api_key_of(request),
                kind="openai",
                lines=lines,
                operation=BATCH_ENDPOINTS[str(endpoint)],
                endpoint=str(endpoint),
                window_seconds=WINDOWS[str(window)],
                input_file=input_file,
                metadata=metadata,
            )

        made = self.accepted(create)
        if isinstance(made, Response):
            return made
        return Response(openai_batch_object(*self.state(made)))

    @batch_schema("v1_batches_list", "The key's batches, newest first (limit, after).")
    def get(self, request: Request) -> Response:
        batches = list(
            ClientBatch.objects.select_related("api_key", "input_file", "output_file", "error_file").filter(
                api_key=api_key_of(request), kind="openai"
            )[:1000]
        )
        return self.page(request, batches, lambda b: openai_batch_object(*self.state(b)), "after")


class BatchDetailApi(BatchApiBase):
    @batch_schema("v1_batches_retrieve", "The batch object: status, counts, output and error files.")
    def get(self, request: Request, public_id: str) -> Response:
        return Response(openai_batch_object(*self.state(self.own_batch(request, public_id))))


class BatchCancelApi(BatchApiBase):
    @batch_schema("v1_batches_cancel", "The batch object (cancelling, then cancelled).", {})
    def post(self, request: Request, public_id: str) -> Response:
        batch = self.own_batch(request, public_id)
        client_batch_cancel(batch)
        return Response(openai_batch_object(*self.state(batch)))


# -- Anthropic: message batches --------------------------------------------------------------------


def anthropic_batch_object(request: Request, batch: ClientBatch, counts: Counts) -> dict[str, Any]:
    ended = batch.ended_at is not None
    results = request.build_absolute_uri(f"/v1/messages/batches/{batch_id(batch)}/results") if ended else None
    return {
        "id": batch_id(batch),
        "type": "message_batch",
        "processing_status": "ended" if ended else "canceling" if batch.cancelled_at else "in_progress",
        "request_counts": {
            "processing": counts.waiting,
            "succeeded": counts.succeeded,
            "errored": counts.failed + counts.refused,
            "canceled": counts.cancelled,
            "expired": counts.expired,
        },
        "created_at": _iso(batch.created_at),
        "ended_at": _iso(batch.ended_at),
        "expires_at": _iso(batch.created_at + timedelta(seconds=batch.window_seconds)),
        "cancel_initiated_at": _iso(batch.cancelled_at),
        "archived_at": None,
        "results_url": results,
    }


class AnthropicBatchApi(BatchApiBase):
    flavour = "anthropic"

    def render(self, request: Request, batch: ClientBatch) -> dict[str, Any]:
        return anthropic_batch_object(request, *self.state(batch))


class MessageBatchesApi(AnthropicBatchApi):
    @batch_schema("v1_messages_batches_create", "The message batch (in_progress).", MESSAGE_BATCH_EXAMPLE)
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            raise exceptions.ValidationError("The request body must be a JSON object.")

        def create() -> ClientBatch:
            lines = anthropic_lines(body.get("requests"), lambda m: self.model_named(request, m))
            return client_batch_create(api_key=api_key_of(request), kind="anthropic", lines=lines)

        made = self.accepted(create)
        if isinstance(made, Response):
            return made
        return Response(self.render(request, made))

    @batch_schema("v1_messages_batches_list", "The key's message batches, newest first (limit, after_id).")
    def get(self, request: Request) -> Response:
        batches = list(
            ClientBatch.objects.select_related("api_key").filter(
                api_key=api_key_of(request), kind="anthropic"
            )[:1000]
        )
        return self.page(request, batches, lambda b: self.render(request, b), "after_id")


class MessageBatchDetailApi(AnthropicBatchApi):
    @batch_schema("v1_messages_batches_retrieve", "The message batch: status, counts, results_url.")
    def get(self, request: Request, public_id: str) -> Response:
        return Response(self.render(request, self.own_batch(request, public_id)))


class MessageBatchCancelApi(AnthropicBatchApi):
    @batch_schema("v1_messages_batches_cancel", "The message batch (canceling, then ended).", {})
    def post(self, request: Request, public_id: str) -> Response:
        batch = self.own_batch(request, public_id)
        client_batch_cancel(batch)
        return Response(self.render(request, batch))


class MessageBatchResultsApi(AnthropicBatchApi):
    @batch_schema("v1_messages_batches_results", "One JSON line per request: its result.")
    def get(self, request: Request, public_id: str) -> HttpResponse | Response:
        batch, counts = self.state(self.own_batch(request, public_id))
        if not counts.ended:
            return self.error(400, "The batch is still processing: its results come when it has ended.")
        return HttpResponse(anthropic_results(batch), content_type="application/binary")
