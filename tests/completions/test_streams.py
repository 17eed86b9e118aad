"""The stream of a request in Redis: a TTL from its first entry, an end on every terminal path, a
reader with a deadline, and attempts that never mix. Against the real Redis of the test run."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from balancer_project.redis_conn import SOCKET_TIMEOUT_SECONDS, get_redis
from completions.models import ApiKey, CompletionRequest, CompletionStatus
from completions.services import completion_request_finish
from completions.sse import Event
from completions.streaming import KEEPALIVE, stream_append, stream_begin, stream_entries, stream_key


def read_all(request_id: str, idle_timeout: float = 5.0) -> list[dict[str, str]]:
    async def run() -> list[dict[str, str]]:
        return [entry async for entry in stream_entries(request_id, idle_timeout=idle_timeout)]

    return asyncio.run(run())


def queued_stream() -> CompletionRequest:
    """A streamed request waiting in line (its stream not begun)."""
    key = ApiKey.objects.create(name="s", prefix="lb-s", key_hash=uuid.uuid4().hex)
    return CompletionRequest.objects.create(
        api_key=key,
        provider="mock",
        model="mock-gpt",
        payload={},
        stream=True,
        status=CompletionStatus.QUEUED,
    )


def chunk(text: str) -> Event:
    return Event(data=json.dumps({"choices": [{"delta": {"content": text}}]}))


def test_a_stream_lives_for_a_bounded_time_from_its_first_entry() -> None:
    rid = str(uuid.uuid4())
    stream_begin(rid, 1)
    assert 0 < get_redis().ttl(stream_key(rid)) <= 3600  # even if its worker dies right now


@pytest.mark.django_db
def test_every_terminal_path_ends_a_streamed_request_even_when_the_caller_does_not_say_it_streams() -> None:
    row = queued_stream()
    # E.g. a model disabled while the request waited: the caller knows nothing of streams.
    assert completion_request_finish(
        request_id=row.id,
        from_status=CompletionStatus.QUEUED,
        status=CompletionStatus.FAILED,
        error={"message": "mock/mock-gpt is no longer served", "transient": False},
    )
    entries = read_all(str(row.id))
    assert entries[-1]["end"] == "failed" and "no longer served" in entries[-1]["error"]
    assert get_redis().ttl(stream_key(str(row.id))) > 0


def test_a_reader_with_nothing_to_read_ends_at_its_deadline() -> None:
    entries = read_all(str(uuid.uuid4()), idle_timeout=0.3)
    assert [e["end"] for e in entries] == ["timeout"]


def test_a_re_run_that_starts_before_anything_was_forwarded_is_streamed_whole() -> None:
    rid = str(uuid.uuid4())
    stream_begin(rid, 1)  # the first attempt failed before its first event
    stream_begin(rid, 2)
    stream_append(rid, chunk("hello"), 2)
    _end(rid)
    entries = read_all(rid)
    assert [e.get("d") for e in entries[:-1]] == [chunk("hello").data]
    assert entries[-1]["end"] == "succeeded"


def test_a_re_run_after_part_of_an_answer_was_forwarded_ends_with_an_error_instead_of_splicing() -> None:
    rid = str(uuid.uuid4())
    stream_begin(rid, 1)
    stream_append(rid, chunk("first "), 1)  # ...and then its worker was killed
    stream_begin(rid, 2)  # the sweeper's re-run
    stream_append(rid, chunk("second"), 2)
    _end(rid)
    entries = read_all(rid)
    assert [e.get("d") for e in entries[:-1]] == [chunk("first ").data]
    assert entries[-1]["end"] == "failed"
    assert "run again" in json.loads(entries[-1]["error"])["message"]


def test_a_reader_waits_past_the_socket_timeout_and_says_so_while_it_waits() -> None:
    """Nothing for longer than the Redis client's socket timeout (a request waiting in line): the
    reader keeps blocking in steps inside that timeout, hands out keep-alives, and then reads."""
    rid = str(uuid.uuid4())

    async def run() -> list[dict[str, str]]:
        async def later() -> None:
            await asyncio.sleep(SOCKET_TIMEOUT_SECONDS + 1)
            stream_begin(rid, 1)
            stream_append(rid, chunk("late"), 1)
            _end(rid)

        writer = asyncio.create_task(later())
        entries = [e async for e in stream_entries(rid, idle_timeout=60, keepalive=3)]
        await writer
        return entries

    entries = asyncio.run(run())
    keepalives = [e for e in entries if e == KEEPALIVE]
    assert len(keepalives) >= 3
    assert [e.get("d") for e in entries if e != KEEPALIVE][:-1] == [chunk("late").data]
    assert entries[-1]["end"] == "succeeded"


def _end(rid: str) -> Any:
    from completions.streaming import stream_end

    pipe = get_redis().pipeline(transaction=False)
    stream_end(rid, "succeeded", pipe=pipe)
    pipe.execute()


@pytest.mark.django_db(transaction=True)
def test_a_stream_its_line_let_go_before_its_first_event_gets_its_504() -> None:
    """The line's deadline can come before the web's own (they are the same length): the stream's
    first entry is then its end, and the client gets the 504 that says nothing was sent upstream."""
    from completions.compat import answer_stream

    row = queued_stream()
    completion_request_finish(
        request_id=row.id,
        from_status=CompletionStatus.QUEUED,
        status=CompletionStatus.EXPIRED,
        error={"message": "The request waited in line longer than its max_wait.", "transient": False},
    )
    response = asyncio.run(answer_stream(row, "openai"))
    assert response.status_code == 504
    assert b"not sent upstream" in response.content  # type: ignore[attr-defined]
