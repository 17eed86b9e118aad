"""Processes the suite starts for real: the web server (uvicorn) and Celery workers. Each is
started with its own session and stopped by its PID, never by name."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
_names = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


class ManagedProcess:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class WebServer(ManagedProcess):
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        super().__init__(
            f"web-{next(_names)}",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "balancer_project.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                # The lifespan opens the probe port (balancer_project.health).
                "--lifespan",
                "on",
                "--backlog",
                "4096",
            ],
            env,
            log_dir,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()

        def up() -> bool:
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, f"{self.name} to answer /health")


def heartbeat_seen(client: Any) -> Callable[[str], bool]:
    """For Worker.start(ready=): whether a worker's heartbeat is in Redis (through `client`, a
    redis.Redis); False while Redis does not answer (it may be restarting or failing over)."""
    from redis.exceptions import RedisError

    from balancer_project.redis_conn import WORKERS_KEY

    def seen(hostname: str) -> bool:
        try:
            return client.zscore(WORKERS_KEY, hostname) is not None
        except RedisError:
            return False

    return seen


class Worker(ManagedProcess):
    def __init__(
        self, env: dict[str, str], log_dir: Path, concurrency: int = 20, pool: str = "threads"
    ) -> None:
        name = f"worker-{next(_names)}"
        self.hostname = f"{name}@{socket.gethostname()}"
        super().__init__(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "balancer_project",
                "worker",
                "--hostname",
                self.hostname,
                "--concurrency",
                str(concurrency),
                "--pool",
                pool,
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            env,
            log_dir,
        )

    def ready(self) -> bool:
        """Whether Celery has said this worker is ready: anywhere in its log, since the queues it
        starts consuming are logged after it, one line each."""
        try:
            return f"{self.hostname} ready." in self.log_path.read_text(errors="replace")
        except OSError:
            return False

    def start(self, ready: Callable[[str], bool] | None = None) -> None:
        super().start()
        if ready is not None:

            def up() -> bool:
                if not self.running:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                return ready(self.hostname)

            wait_until(up, 60, f"{self.name} to report alive")


class Beat(ManagedProcess):
    """Celery beat: the cluster's periodic care (tend, sweep) on the test settings' schedule."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        name = f"beat-{next(_names)}"
        super().__init__(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "balancer_project",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(log_dir / f"{name}-schedule"),
            ],
            env,
            log_dir,
        )


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    """Run a management command in a process of its own, with `env`; its standard output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def admin_session(base_url: str, username: str, password: str) -> httpx.Client:
    """An HTTP client signed in to the admin of a live web process, through its login form."""
    client = httpx.Client(base_url=base_url, timeout=30, follow_redirects=True)
    form = client.get("/admin/login/").text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    if token is None:
        raise RuntimeError("no CSRF token in the admin's login form")
    signed_in = client.post(
        "/admin/login/?next=/admin/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{base_url}/admin/login/"},
    )
    if signed_in.status_code != 200 or "Log out" not in signed_in.text:
        raise RuntimeError(f"the admin refused {username}'s login ({signed_in.status_code})")
    return client
