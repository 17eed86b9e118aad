"""The Batch APIs through the official SDKs (completions.batch_api): OpenAI's files and batches,
Anthropic's message batches, against the live stack. A batch's lines are batch-class requests:
those to gpt-batch and claude-batch go on in the providers' own batches (tests.fake_batches),
the others realtime; the results come back in each provider's format."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import anthropic
import httpx
import openai
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.timeout(180)


def _line(custom_id: str, model: str, text: str, **body: Any) -> str:
    request = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 10, **body}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}
    )


def _until(check: Any, seconds: float = 120) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_an_openai_batch_through_the_sdk(
    web: Any, worker: Any, make_key: Any, marker: str, django_db_blocker: Any
) -> None:
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=make_key("batcher"), max_retries=0)
    lines = [
        *(_line(f"cheap-{i}", "gpt-batch", f"{marker} cheap {i}") for i in range(4)),
        *(_line(f"mock-{i}", "mock-gpt", f"{marker} mock {i}") for i in range(2)),
        _line("refused", "gpt-test", f"{marker} refused", fake={"status": 400}),
    ]
    uploaded = client.files.create(file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "in_progress" and batch.request_counts is not None
    assert batch.request_counts.total == 7 and batch.metadata == {"job": "nightly"}
    done = _until(lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b)
    assert done.request_counts.completed == 6 and done.request_counts.failed == 1
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in output) == [*(f"cheap-{i}" for i in range(4)), "mock-0", "mock-1"]
    assert all(x["response"]["status_code"] == 200 and x["response"]["body"]["choices"] for x in output)
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [(x["custom_id"], x["response"]["status_code"]) for x in errors] == [("refused", 400)]
    assert batch.id in [b.id for b in client.batches.list()]
    # Each line is a request of the batch class, its deadline the window; gpt-batch's went on in
    # a provider batch, bar the one its realtime line took at once.
    records = httpx.get(
        f"{web.url}/api/v1/completions", headers={"Authorization": f"Bearer {client.api_key}"}, timeout=30
    ).json()["results"]
    mine = {r["client_batch"]["custom_id"]: r for r in records if r["client_batch"]}
    assert len(mine) == 7 and {r["client_batch"]["id"] for r in mine.values()} == {batch.id}
    assert {r["priority"] for r in mine.values()} == {"batch"}
    assert sum(mine[f"cheap-{i}"]["tier"]["served"] == "batch" for i in range(4)) >= 2
    # The admin lists the batch, and its requests through a link.
    with django_db_blocker.unblock():
        staff = Client()
        staff.force_login(
            get_user_model().objects.create_superuser(f"root-{marker}", "r@example.com", "pw-tests")
        )
        pk = batch.id.removeprefix("batch_")
        page = staff.get(reverse("admin:completions_clientbatch_change", args=[str(uuid.UUID(pk))]))
        assert page.status_code == 200 and "its 7 requests" in page.content.decode()
        listed = staff.get(
            reverse("admin:completions_completionrequest_changelist"),
            {"client_batch__id__exact": str(uuid.UUID(pk))},
        )
        assert listed.status_code == 200 and listed.context["cl"].result_count == 7

    # Another key sees none of it.
    stranger = openai.OpenAI(base_url=f"{web.url}/v1", api_key=make_key("stranger"), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        stranger.files.content(done.output_file_id)
    assert batch.id not in [b.id for b in stranger.batches.list()]


def test_a_bad_line_refuses_the_whole_batch_and_cancelling_ends_what_waits(
    web: Any, worker: Any, make_key: Any, marker: str
) -> None:
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=make_key("batcher"), max_retries=0)
    bad = client.files.create(
        file=("bad.jsonl", f"{_line('a', 'gpt-test', marker)}\nnot json\n".encode()), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError, match="Line 2 is not JSON"):
        client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    twice = client.files.create(
        file=(
            "twice.jsonl",
            f"{_line('a', 'gpt-test', marker)}\n{_line('a', 'gpt-test', marker)}\n".encode(),
        ),
        purpose="batch",
    )
    with pytest.raises(openai.BadRequestError, match="appears twice"):
        client.batches.create(
            input_file_id=twice.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    unknown = client.files.create(
        file=("u.jsonl", _line("a", "no-such-model", marker).encode()), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError, match="Line 1: The model 'no-such-model' is not served"):
        client.batches.create(
            input_file_id=unknown.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    # mock-patience lets one request through a minute: the rest wait, and cancelling ends them.
    waiting = client.files.create(
        file=(
            "w.jsonl",
            "\n".join(_line(f"w-{i}", "mock-patience", f"{marker} {i}") for i in range(3)).encode(),
        ),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=waiting.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = _until(lambda: (b := client.batches.retrieve(batch.id)).status == "cancelled" and b)
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
    assert len(errors) + done.request_counts.completed == 3 and len(errors) >= 2


def test_an_anthropic_message_batch_through_the_sdk(
    web: Any, worker: Any, make_key: Any, marker: str, fake_upstream: FakeUpstream
) -> None:
    client = anthropic.Anthropic(base_url=web.url, api_key=make_key("batcher"), max_retries=0)
    requests: list[Any] = [
        {
            "custom_id": f"c-{i}",
            "params": {
                "model": model,
                "max_tokens": 10,
                "messages": [{"role": "user", "content": f"{marker} {i}"}],
            },
        }
        for i, model in enumerate(["claude-batch", "claude-batch", "claude-batch", "claude-test"])
    ]
    batch = client.messages.batches.create(requests=requests)
    assert batch.processing_status == "in_progress" and batch.id.startswith("msgbatch_")
    ended = _until(
        lambda: (b := client.messages.batches.retrieve(batch.id)).processing_status == "ended" and b
    )
    assert ended.request_counts.succeeded == 4
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert sorted(results) == ["c-0", "c-1", "c-2", "c-3"]
    assert all(r.type == "succeeded" and r.message.content for r in results.values())
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.batches.create(
            requests=[{"custom_id": "x", "params": {"model": "claude-test", "messages": []}}]  # type: ignore[typeddict-item]
        )
    stranger = anthropic.Anthropic(base_url=web.url, api_key=make_key("stranger"), max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        stranger.messages.batches.retrieve(batch.id)
