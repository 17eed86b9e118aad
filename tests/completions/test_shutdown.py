"""Graceful shutdown under load: SIGTERM to a worker finishes the calls it is running (and hands
back what it holds but has not started), to a web process finishes the calls it holds open —
every accepted request ends well, none is called twice. Against the fake upstream, whose record of
every call it received says how often each request was called."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.live import wait_until

pytestmark = pytest.mark.timeout(180)


def _called(upstream: FakeUpstream, texts: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(texts, 0)
    for record in upstream.received(texts[0].rsplit(" ", 1)[0]):
        text = (record.body.get("messages") or [{}])[0].get("content")
        if text in counts and record not in upstream.rejected:
            counts[text] += 1
    return counts


def test_sigterm_to_a_worker_under_load_finishes_its_calls_and_runs_nothing_twice(
    api: httpx.Client, worker: Any, fake_upstream: FakeUpstream, marker: str
) -> None:
    """Thirty calls of 2 s each; the only worker is told to stop while it runs some: it finishes
    them and exits; a worker started again runs the rest."""
    from tests.conftest import _worker_alive

    texts = [f"{marker} {i}" for i in range(30)]
    body = {"provider": "openai", "model": "gpt-test", "wait": 0}
    ids = [
        api.post(
            "/completions",
            json={
                **body,
                "payload": {"messages": [{"role": "user", "content": t}], "fake": {"latency_ms": 2000}},
            },
        ).json()["id"]
        for t in texts
    ]
    wait_until(lambda: sum(_called(fake_upstream, texts).values()) >= 5, 30, "calls to be under way")
    started = time.monotonic()
    worker.stop(sig=signal.SIGTERM, timeout=60)
    assert time.monotonic() - started < 60  # it finished its calls and went, never killed
    worker.start(ready=_worker_alive)

    def ended() -> bool:
        return all(
            api.get(f"/completions/{rid}").json()["status"] not in ("queued", "running") for rid in ids
        )

    wait_until(ended, 120, "every request to end", interval=0.5)
    assert {api.get(f"/completions/{rid}").json()["status"] for rid in ids} == {"succeeded"}
    assert set(_called(fake_upstream, texts).values()) == {1}


def test_sigterm_to_a_web_process_finishes_the_calls_it_holds_open(
    stack_env: dict[str, str],
    run_dir: Any,
    worker: Any,
    make_key: Any,
    fake_upstream: FakeUpstream,
    marker: str,
) -> None:
    """Ten compatible calls of 2 s each held by a web process told to stop meanwhile: each gets
    its answer, then the process exits."""
    from tests.live import WebServer

    web = WebServer(stack_env, run_dir / "logs")
    web.start()
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=make_key("shutdown"), max_retries=0, timeout=60)
    texts = [f"{marker} {i}" for i in range(10)]
    answers: dict[str, Any] = {}

    def call(text: str) -> None:
        try:
            answers[text] = client.chat.completions.create(
                model="gpt-test",
                messages=[{"role": "user", "content": text}],
                extra_body={"fake": {"latency_ms": 2000}},
            )
        except openai.OpenAIError as exc:
            answers[text] = exc

    threads = [threading.Thread(target=call, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    wait_until(lambda: sum(_called(fake_upstream, texts).values()) >= 5, 30, "calls to be under way")
    started = time.monotonic()
    web.stop(sig=signal.SIGTERM, timeout=60)
    assert time.monotonic() - started < 60  # it answered its calls and went, never killed
    for t in threads:
        t.join(30)
    failed = {t: a for t, a in answers.items() if isinstance(a, Exception)}
    assert not failed, failed
    assert all(answers[t].choices[0].message.content for t in texts)
    assert set(_called(fake_upstream, texts).values()) == {1}
