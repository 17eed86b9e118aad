"""Hostile and odd inputs, sent as real clients and proxies send them, to a web process with DEBUG
off (production) and one with DEBUG on (`make run`): every one gets a JSON 4xx in the shape of
the API it reached, never a 500 or an HTML page, and nothing is half-written."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import WebServer

DEEP = 100_000
BIG = 2**63


@pytest.fixture(scope="module", params=["debug-off", "debug-on"])
def hostile_web(request: Any, stack_env: dict[str, str], run_dir: Path, worker: Any) -> Iterator[WebServer]:
    env = dict(stack_env)
    if request.param == "debug-on":
        env.update(DJANGO_SETTINGS_MODULE="balancer_project.settings.local", DJANGO_DEBUG="true")
    server = WebServer(env, run_dir / "logs")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hostile_key(make_key: Any) -> str:
    return make_key("hostile")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


NATIVE = '{{"provider": "mock", "model": "mock-gpt", "wait": 0, "payload": {payload}}}'
OPENAI = '{{"model": "mock-gpt", "messages": [{{"role": "user", "content": "hi"}}], {extra}}}'
ANTHROPIC = '{{"model": "mock-claude", "messages": [{{"role": "user", "content": "hi"}}], {extra}}}'

# (name, path, raw JSON body, the error shape expected: native | openai | anthropic)
BODIES = [
    (
        "native nested",
        "/api/v1/completions",
        NATIVE.format(payload=f'{{"messages": {nested(DEEP)}}}'),
        "native",
    ),
    (
        "openai nested",
        "/v1/chat/completions",
        f'{{"model": "mock-gpt", "messages": {nested(DEEP)}}}',
        "openai",
    ),
    (
        "anthropic nested",
        "/v1/messages",
        f'{{"model": "mock-claude", "messages": {nested(DEEP)}}}',
        "anthropic",
    ),
    (
        "native max_tokens 2^63",
        "/api/v1/completions",
        NATIVE.format(payload=f'{{"max_tokens": {BIG}, "messages": []}}'),
        "native",
    ),
    ("openai max_tokens 2^63", "/v1/chat/completions", OPENAI.format(extra=f'"max_tokens": {BIG}'), "openai"),
    (
        "anthropic max_tokens 2^63",
        "/v1/messages",
        ANTHROPIC.format(extra=f'"max_tokens": {BIG}'),
        "anthropic",
    ),
    ("openai max_tokens 1e400", "/v1/chat/completions", OPENAI.format(extra='"max_tokens": 1e400'), "openai"),
    ("openai NaN", "/v1/chat/completions", OPENAI.format(extra='"temperature": NaN'), "openai"),
    ("native Infinity", "/api/v1/completions", NATIVE.format(payload='{"top_p": -Infinity}'), "native"),
    (
        "anthropic max_tokens string",
        "/v1/messages",
        ANTHROPIC.format(extra='"max_tokens": "10"'),
        "anthropic",
    ),
    (
        "anthropic max_tokens negative",
        "/v1/messages",
        ANTHROPIC.format(extra='"max_tokens": -1'),
        "anthropic",
    ),
    ("openai max_tokens float", "/v1/chat/completions", OPENAI.format(extra='"max_tokens": 10.5'), "openai"),
    (
        "openai lone surrogate",
        "/v1/chat/completions",
        '{"model": "mock-gpt", "messages": [{"role": "user", "content": "\\ud800"}]}',
        "openai",
    ),
    (
        "native lone surrogate",
        "/api/v1/completions",
        NATIVE.format(payload='{"messages": [{"role": "user", "content": "a\\udfff"}]}'),
        "native",
    ),
    (
        "openai duplicate model",
        "/v1/chat/completions",
        '{"model": "no-such", "model": "mock-gpt", "messages": []}',
        "openai",
    ),
    (
        "anthropic duplicate key",
        "/v1/messages",
        ANTHROPIC.format(extra='"max_tokens": 5, "max_tokens": 6'),
        "anthropic",
    ),
    (
        "native duplicate model",
        "/api/v1/completions",
        '{"model": "mock-gpt", "payload": {"messages": [], "model": "x", "model": "mock-gpt"}}',
        "native",
    ),
    ("openai no model", "/v1/chat/completions", '{"messages": []}', "openai"),
    ("anthropic no model", "/v1/messages", '{"max_tokens": 5, "messages": []}', "anthropic"),
    ("openai body not an object", "/v1/chat/completions", "[1, 2]", "openai"),
    ("openai not JSON", "/v1/chat/completions", "{not json", "openai"),
    ("native not JSON", "/api/v1/completions", "{not json", "native"),
    ("native invalid UTF-8", "/api/v1/completions", b'{"provider": "\xff\xfe"}', "native"),
]


def error_message(shape: str, body: Any) -> str:
    """The error's message, checking the body has `shape`'s error format."""
    if shape == "anthropic":
        assert body["type"] == "error", body
        return str(body["error"]["message"])
    if shape == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        return str(body["error"]["message"])
    assert set(body["error"]) >= {"type", "message"} and "param" not in body["error"], body
    return str(body["error"]["message"])


@pytest.mark.parametrize("name,path,raw,shape", BODIES, ids=[b[0] for b in BODIES])
def test_a_hostile_body_gets_a_clear_json_4xx(
    hostile_web: WebServer, hostile_key: str, name: str, path: str, raw: str | bytes, shape: str
) -> None:
    headers = {"Authorization": f"Bearer {hostile_key}", "Content-Type": "application/json"}
    if shape == "anthropic":
        headers["x-api-key"] = hostile_key
    response = httpx.post(
        f"{hostile_web.url}{path}",
        content=raw.encode() if isinstance(raw, str) else raw,
        headers=headers,
        timeout=30,
    )
    assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json"), response.text[:300]
    message = error_message(shape, response.json())
    # A readable sentence, not a serialised list or dict.
    assert message and not message.startswith(("[", "{")), message
    if "duplicate" in name:  # it names the key written twice
        assert "appears twice" in message and ("'model'" in message or "'max_tokens'" in message), message


# (method, path, status) — each answered in JSON, in the shape of the API its path belongs to.
PLACES = [
    ("GET", "/api/v1/nowhere", 404, "native"),
    ("GET", "/api/v1/completions/not-a-uuid", 404, "native"),
    ("GET", "/api/v1/completions/00000000-0000-0000-0000-000000000000", 404, "native"),
    ("GET", "/v1/nowhere", 404, "openai"),
    ("GET", "/v1/responses", 405, "openai"),
    ("GET", "/v1/embeddings", 405, "openai"),
    ("GET", "/v1/models/x", 404, "openai"),
    ("PUT", "/v1/chat/completions", 405, "openai"),
    ("GET", "/v1/messages", 405, "anthropic"),
    ("POST", "/health", 405, "native"),
    ("POST", "/ready", 405, "native"),
    ("DELETE", "/api/v1/queues", 405, "native"),
    ("GET", "/api/v1/completions?limit=-1", 400, "native"),
    ("GET", "/api/v1/completions?limit=abc", 400, "native"),
    ("GET", "/api/v1/completions?cursor=!!!", 400, "native"),
    ("GET", "/api/v1/completions?cursor=cD1ub3RhZGF0ZQ==", 400, "native"),  # p=notadate
    ("GET", "/api/v1/completions?cursor=cD0yMDI2LTEzLTQ1IDAwOjAwOjAw", 400, "native"),  # month 13
    ("GET", "/api/v1/completions?cursor=bz1hYmMmcD14", 400, "native"),  # o=abc
    ("GET", "/api/v1/completions/00000000-0000-0000-0000-000000000000?wait=abc", 400, "native"),
    ("GET", "/api/v1/queues?input_tokens=-5", 400, "native"),
]


@pytest.mark.parametrize("method,path,status,shape", PLACES, ids=[f"{p[0]} {p[1]}" for p in PLACES])
def test_every_error_status_is_json_in_the_api_s_shape(
    hostile_web: WebServer, hostile_key: str, method: str, path: str, status: int, shape: str
) -> None:
    headers = {"Authorization": f"Bearer {hostile_key}", "x-api-key": hostile_key}
    response = httpx.request(method, f"{hostile_web.url}{path}", headers=headers, timeout=30)
    assert response.status_code == status, f"{response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json"), response.text[:300]
    error_message(shape, response.json())


def test_an_accepted_odd_but_valid_body_is_stored_and_answered(
    hostile_web: WebServer, hostile_key: str
) -> None:
    # Big integers the balancer does not read, a valid surrogate pair (an emoji), moderate nesting.
    body = {
        "model": "mock-gpt",
        "seed": 2**70,
        "messages": [{"role": "user", "content": "\U0001f600"}],
        "metadata": {"deep": json.loads(nested(20))},
    }
    response = httpx.post(
        f"{hostile_web.url}/v1/chat/completions",
        content=json.dumps(body, ensure_ascii=True),
        headers={"Authorization": f"Bearer {hostile_key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text[:300]


def test_clients_that_go_away_at_once_leave_no_error_in_the_log(
    hostile_web: WebServer, hostile_key: str
) -> None:
    host, port = hostile_web.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": "bye"}]}).encode()
    for path, partial in [("/v1/chat/completions", False), ("/api/v1/completions", True)] * 10:
        sent = body[: len(body) // 2] if partial else body
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {hostile_key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + sent
            )
    # Every request of this module so far was answered with a 4xx or not at all: no traceback,
    # no error line, in the web process's log.
    assert httpx.get(f"{hostile_web.url}/health", timeout=10).status_code == 200
    time.sleep(1)
    log = hostile_web.log_tail(10**7)
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def _raw_request(web: WebServer, head: str, body_chunks: Iterable[bytes] = ()) -> tuple[int, bytes]:
    """Send a request over a raw socket (headers, then body chunks while the server reads them);
    returns the status and body of the answer, read as soon as it comes."""
    host, port = web.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head.encode())
        for chunk in body_chunks:
            try:
                conn.sendall(chunk)
            except OSError:
                break  # the server answered and closed: it read no more
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            got = conn.recv(65536)
            if not got:
                break
            answer += got
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def _chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        part = data[i : i + size]
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


def test_a_chunked_body_is_read_whole(hostile_web: WebServer, hostile_key: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "mock-gpt", '
        yield b'"messages": [{"role": "user", "content": "chunked"}]}'

    # httpx sends a generator body with Transfer-Encoding: chunked and no Content-Length.
    response = httpx.post(
        f"{hostile_web.url}/v1/chat/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {hostile_key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text[:300]
    assert response.json()["object"] == "chat.completion"


def test_an_oversized_chunked_body_gets_413_and_is_not_read_in_full(
    hostile_web: WebServer, hostile_key: str
) -> None:
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {hostile_key}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    status, body = _raw_request(hostile_web, head, _chunked(b"x" * 50_000_000))
    assert status == 413
    assert json.loads(body)["error"]["type"] == "invalid_request_error"  # OpenAI's shape


def test_an_oversized_content_length_gets_413_before_the_body_is_sent(hostile_web: WebServer) -> None:
    # Only the headers are sent: the answer must come without the server waiting for the body.
    head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    status, body = _raw_request(hostile_web, head)
    assert status == 413
    assert json.loads(body)["type"] == "error"  # Anthropic's shape
