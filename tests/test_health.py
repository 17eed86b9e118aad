"""Liveness probes on a port of their own: a small process per web process
(balancer_project.probe) answers them, and says whether the web's event loop still beats."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live import ROOT, WebServer, free_port, wait_until


@pytest.fixture
def probe() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The probe process on its own, this test playing the web (its stdin is the heartbeat pipe);
    stall after 1 s of silence."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "balancer_project" / "probe.py"), "127.0.0.1", str(port), "1"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    yield process, f"http://127.0.0.1:{port}"
    if process.poll() is None:
        process.kill()
    process.wait()


def _beat(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.write(b".")
    process.stdin.flush()


def test_probe_says_stalled_while_the_web_is_silent_and_ok_once_it_beats_again(
    probe: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, base = probe
    _beat(process)
    assert httpx.get(f"{base}/health", timeout=10).json() == {"status": "ok"}
    # No heartbeat, as from a web whose event loop is stuck in a call.
    wait_until(
        lambda: httpx.get(f"{base}/health", timeout=10).status_code == 503, 30, "the probe to see the stall"
    )
    stalled = httpx.get(f"{base}/health", timeout=10).json()
    assert stalled["status"] == "stalled" and stalled["event_loop_silent_seconds"] >= 1.0

    def beating() -> bool:
        _beat(process)
        return httpx.get(f"{base}/health", timeout=10).status_code == 200

    wait_until(beating, 30, "the probe to hear the web again")


def test_probe_serves_get_and_head_of_health_only_and_outlives_bad_clients(
    probe: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, base = probe
    _beat(process)
    head = httpx.head(f"{base}/health", timeout=10)
    assert (head.status_code, head.content) == (200, b"")
    assert httpx.post(f"{base}/health", timeout=10).json()["error"]["type"] == "method_not_allowed"
    missing = httpx.get(f"{base}/admin/", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    port = int(base.rsplit(":", 1)[1])
    idle = socket.create_connection(("127.0.0.1", port))
    garbage = socket.create_connection(("127.0.0.1", port))
    try:
        garbage.sendall(b"\x00" * 100_000)  # no end of headers within the read limit
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    finally:
        idle.close()
        garbage.close()


def test_probe_ends_when_the_web_closes_its_end_of_the_pipe(
    probe: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, _ = probe
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=30) == 0


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_web_opens_the_probe_port_and_its_probe_dies_with_it(
    stack_env: dict[str, str], run_dir: Path
) -> None:
    port = free_port()
    web = WebServer({**stack_env, "BALANCER_HEALTH_PORT": str(port)}, run_dir / "logs")
    web.start()
    try:
        assert web.process is not None
        answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
        probe_pids = _children(web.process.pid)
        assert len(probe_pids) == 1
        # Killed outright, the web cannot stop its probe: the probe sees the pipe close and ends.
        web.stop(sig=signal.SIGKILL)
    finally:
        web.stop()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{probe_pids[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{probe_pids[0]}").exists()  # reaped by init once it exited


def test_web_refuses_to_start_when_the_probe_port_is_taken(stack_env: dict[str, str], run_dir: Path) -> None:
    port = free_port()
    with socket.socket() as taken:  # someone else's listener, without SO_REUSEPORT
        taken.bind(("127.0.0.1", port))
        taken.listen()
        refused = WebServer({**stack_env, "BALANCER_HEALTH_PORT": str(port)}, run_dir / "logs")
        with pytest.raises(RuntimeError):
            refused.start()
        assert not refused.running
        assert "the probe port" in refused.log_tail()
        refused.stop()
