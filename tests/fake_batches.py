"""The providers' batch APIs, for the fake upstream (tests.fake_upstream), as strictly as the
providers serve them.

OpenAI: `POST /v1/files` (multipart, purpose=batch, JSONL lines `{custom_id, method, url, body}`),
`GET /v1/files/{id}/content`, `POST /v1/batches {input_file_id, endpoint, completion_window}`,
`GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`. Anthropic: `POST /v1/messages/batches
{requests: [{custom_id, params}]}`, `GET /v1/messages/batches/{id}`, `…/results` (JSONL),
`POST …/cancel`.

A batch's items are processed one after another over `seconds` (BatchTier, per model): cancelled
part-way, those done are in its results and the rest are not processed (OpenAI leaves them out,
Anthropic reports them `canceled`). Each model's batches have their own limit, the tokens
enqueued at once (each item's prompt plus its output cap, as OpenAI counts them): a batch that
would pass it is refused (OpenAI: created `failed` with `token_limit_exceeded`; Anthropic: 429),
counted in `refused`. Every item processed is counted in `processed` (custom_id, batch id): a test
checks that nothing was processed twice.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import TYPE_CHECKING, Any

from completions.tokens import estimate_input_tokens, requested_output_cap

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from tests.fake_upstream import FakeUpstream

CANCEL_SECONDS = 0.3  # how long a batch stays cancelling


@dataclass
class BatchTier:
    """A model's batch processing: how long a batch takes, and its enqueued-token limit."""

    seconds: float = 2.0
    enqueued_tokens: int | None = None


@dataclass
class Batch:
    id: str
    flavour: str
    model: str
    items: list[tuple[str, dict[str, Any]]]
    tokens: int
    seconds: float
    endpoint: str = ""
    input_file_id: str = ""
    created: float = field(default_factory=time.time)
    cancelled_at: float | None = None
    failed: dict[str, Any] | None = None

    def done(self, now: float) -> int:
        """How many items are processed by `now` (frozen when it was cancelled)."""
        until = min(now, self.cancelled_at) if self.cancelled_at is not None else now
        share = 1.0 if self.seconds <= 0 else (until - self.created) / self.seconds
        return min(len(self.items), max(0, int(len(self.items) * share)))

    def ended(self, now: float) -> bool:
        if self.failed is not None:
            return True
        if self.cancelled_at is not None:
            return now >= self.cancelled_at + CANCEL_SECONDS
        return self.done(now) == len(self.items)


class FakeBatches:
    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.tiers: dict[str, BatchTier] = {}
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, Batch] = {}
        self.refused: list[str] = []  # batches refused for their enqueued tokens
        self.processed: list[tuple[str, str]] = []  # (custom_id, batch id), once per item processed
        self.results: dict[str, list[dict[str, Any]]] = {}  # each ended batch's results, built once
        self.lock = threading.Lock()

    @staticmethod
    def serves(method: str, path: str) -> bool:
        return path.startswith(("/v1/files", "/v1/batches", "/v1/messages/batches"))

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str, raw: bytes, headers: dict[str, str]) -> None:
        path = h.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        anthropic = path.startswith("/v1/messages/batches")
        if not self._authorized(headers, anthropic):
            flavour = "anthropic" if anthropic else "openai"
            return self.upstream.send(h, 401, self.upstream.error(flavour, "bad key", "authentication_error"))
        if anthropic:
            return self._anthropic(h, method, parts[3:], raw)
        if parts[1] == "files":
            return self._files(h, method, parts[2:], raw, headers)
        return self._openai(h, method, parts[2:], raw)

    def _authorized(self, headers: dict[str, str], anthropic: bool) -> bool:
        from tests.fake_upstream import ANTHROPIC_KEY, OPENAI_KEY

        bearer = headers.get("authorization", "")[len("Bearer ") :]
        if anthropic:
            return ANTHROPIC_KEY in (headers.get("x-api-key"), bearer)
        return bearer == OPENAI_KEY

    def _missing(self, h: BaseHTTPRequestHandler, what: str) -> None:
        self.upstream.send(h, 404, {"error": {"message": f"No such {what}", "type": "invalid_request_error"}})

    # -- OpenAI ---------------------------------------------------------------------------------

    def _files(
        self, h: BaseHTTPRequestHandler, method: str, rest: list[str], raw: bytes, headers: dict[str, str]
    ) -> None:
        if method == "POST" and not rest:
            message = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode() + raw
            )
            form = {
                part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                for part in message.iter_parts()
            }
            if form.get("purpose") != b"batch" or not form.get("file"):
                return self.upstream.send(
                    h, 400, {"error": {"message": "purpose must be batch", "type": "invalid_request_error"}}
                )
            file_id = f"file-{uuid.uuid4().hex[:24]}"
            with self.lock:
                self.files[file_id] = form["file"]
            return self.upstream.send(h, 200, _file_object(file_id, len(form["file"]), "batch"))
        if method == "GET" and len(rest) == 2 and rest[1] == "content":
            data = self._file(rest[0])
            if data is None:
                return self._missing(h, "file")
            return self.upstream.send_bytes(h, 200, data, "application/octet-stream")
        return self._missing(h, "route")

    def _file(self, file_id: str) -> bytes | None:
        """A file: uploaded, or an ended batch's output (`file-out-…`) or errors (`file-err-…`)."""
        for prefix, wanted in (("file-out-", "output"), ("file-err-", "error")):
            if file_id.startswith(prefix):
                batch = self.batches.get(file_id[len(prefix) :])
                if batch is None or not batch.ended(time.time()):
                    return None
                lines = [r for r in self._results(batch) if (r["error"] is None) == (wanted == "output")]
                return "".join(json.dumps(r) + "\n" for r in lines).encode()
        return self.files.get(file_id)

    def _openai(self, h: BaseHTTPRequestHandler, method: str, rest: list[str], raw: bytes) -> None:
        if method == "POST" and not rest:
            body = json.loads(raw or b"{}")
            data = self.files.get(str(body.get("input_file_id")))
            if data is None:
                return self._missing(h, "file")
            items = []
            for line in data.decode().splitlines():
                if line.strip():
                    item = json.loads(line)
                    items.append((item["custom_id"], item["body"]))
            batch = self._create("openai", items, endpoint=body.get("endpoint", ""))
            batch.input_file_id = body["input_file_id"]
            return self.upstream.send(h, 200, self._openai_object(batch))
        batch = self.batches.get(rest[0]) if rest else None
        if batch is None or batch.flavour != "openai":
            return self._missing(h, "batch")
        if method == "POST" and rest[1:] == ["cancel"]:
            self._cancel(batch)
        return self.upstream.send(h, 200, self._openai_object(batch))

    def _openai_object(self, batch: Batch) -> dict[str, Any]:
        now = time.time()
        ended = batch.ended(now)
        done = batch.done(now)
        results = self._results(batch) if ended else []
        failed = sum(1 for r in results if r["error"] is not None)
        if batch.failed is not None:
            status = "failed"
        elif batch.cancelled_at is not None:
            status = "cancelled" if ended else "cancelling"
        else:
            status = "completed" if ended else "in_progress"
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": batch.failed,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": f"file-out-{batch.id}" if ended and batch.failed is None else None,
            "error_file_id": f"file-err-{batch.id}" if failed else None,
            "created_at": int(batch.created),
            "request_counts": {"total": len(batch.items), "completed": done - failed, "failed": failed},
            "metadata": None,
        }

    # -- Anthropic ------------------------------------------------------------------------------

    def _anthropic(self, h: BaseHTTPRequestHandler, method: str, rest: list[str], raw: bytes) -> None:
        if method == "POST" and not rest:
            body = json.loads(raw or b"{}")
            items = [(r["custom_id"], r["params"]) for r in body.get("requests") or []]
            batch = self._create("anthropic", items)
            if batch.failed is not None:
                return self.upstream.send(
                    h, 429, self.upstream.error("anthropic", batch.failed["message"], "rate_limit_error")
                )
            return self.upstream.send(h, 200, self._anthropic_object(h, batch))
        batch = self.batches.get(rest[0]) if rest else None
        if batch is None or batch.flavour != "anthropic":
            return self._missing(h, "batch")
        if method == "POST" and rest[1:] == ["cancel"]:
            self._cancel(batch)
        if method == "GET" and rest[1:] == ["results"]:
            if not batch.ended(time.time()):
                return self._missing(h, "results (the batch is still processing)")
            data = "".join(json.dumps(r) + "\n" for r in self._results(batch)).encode()
            return self.upstream.send_bytes(h, 200, data, "application/binary")
        return self.upstream.send(h, 200, self._anthropic_object(h, batch))

    def _anthropic_object(self, h: BaseHTTPRequestHandler, batch: Batch) -> dict[str, Any]:
        now = time.time()
        ended = batch.ended(now)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            for r in self._results(batch):
                counts[r["result"]["type"]] += 1
        else:
            counts["processing"] = len(batch.items) - batch.done(now)
            counts["succeeded"] = batch.done(now)
        host, port = h.server.server_address[:2]
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "canceling" if batch.cancelled_at else "in_progress",
            "request_counts": counts,
            "created_at": _iso(batch.created),
            "ended_at": _iso(now) if ended else None,
            "expires_at": _iso(batch.created + 86400),
            "cancel_initiated_at": _iso(batch.cancelled_at) if batch.cancelled_at else None,
            "archived_at": None,
            "results_url": f"http://{host}:{port}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    # -- both -----------------------------------------------------------------------------------

    def _create(self, flavour: str, items: list[tuple[str, dict[str, Any]]], endpoint: str = "") -> Batch:
        model = str(items[0][1].get("model", "")) if items else ""
        tier = self.tiers.get(model, BatchTier())
        tokens = sum(
            estimate_input_tokens(body, kind=flavour) + (requested_output_cap(body) or 1024)
            for _, body in items
        )
        prefix = "msgbatch_" if flavour == "anthropic" else "batch_"
        batch = Batch(
            f"{prefix}{uuid.uuid4().hex[:24]}", flavour, model, items, tokens, tier.seconds, endpoint
        )
        with self.lock:
            now = time.time()
            enqueued = sum(b.tokens for b in self.batches.values() if b.model == model and not b.ended(now))
            if tier.enqueued_tokens is not None and enqueued + tokens > tier.enqueued_tokens:
                message = (
                    f"Enqueued token limit reached for {model}: {enqueued} enqueued, limit "
                    f"{tier.enqueued_tokens}; this batch has {tokens}."
                )
                batch.failed = {
                    "object": "list",
                    "data": [{"code": "token_limit_exceeded", "message": message}],
                }
                if flavour == "anthropic":
                    batch.failed = {"message": message}
                self.refused.append(batch.id)
            self.batches[batch.id] = batch
        return batch

    def _cancel(self, batch: Batch) -> None:
        with self.lock:
            if batch.cancelled_at is None and not batch.ended(time.time()):
                batch.cancelled_at = time.time()

    def _results(self, batch: Batch) -> list[dict[str, Any]]:
        """An ended batch's result lines, built (and its items counted as processed) once."""
        with self.lock:
            built = self.results.get(batch.id)
            if built is not None:
                return built
            if batch.failed is not None:
                self.results[batch.id] = []
                return []
            done = batch.done(time.time())
            lines = []
            for number, (custom_id, body) in enumerate(batch.items):
                if number < done:
                    self.processed.append((custom_id, batch.id))
                lines.append(self._line(batch, custom_id, body, processed=number < done))
            self.results[batch.id] = [line for line in lines if line is not None]
            return self.results[batch.id]

    def _line(
        self, batch: Batch, custom_id: str, body: dict[str, Any], *, processed: bool
    ) -> dict[str, Any] | None:
        fake = body.get("fake") or {}
        status = int(fake.get("status", 200))
        answer = (
            self.upstream.answer(batch.flavour, body, estimate_input_tokens(body, kind=batch.flavour))
            if status == 200
            else (fake.get("body") or self.upstream.error(batch.flavour, "refused", "invalid_request_error"))
        )
        if batch.flavour == "anthropic":
            if not processed:
                return {"custom_id": custom_id, "result": {"type": "canceled"}}
            if status != 200:
                return {"custom_id": custom_id, "result": {"type": "errored", "error": answer}}
            return {"custom_id": custom_id, "result": {"type": "succeeded", "message": answer}}
        if not processed:
            return None  # OpenAI leaves out what a cancelled batch never processed
        if status == 200:
            answer["service_tier"] = "batch"
        return {
            "id": f"batch_req_{uuid.uuid4().hex[:24]}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": answer},
            "error": None if status == 200 else {"code": "invalid_request", "message": "refused"},
        }


def _file_object(file_id: str, size: int, purpose: str) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": "batch.jsonl",
        "purpose": purpose,
        "status": "processed",
    }


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
