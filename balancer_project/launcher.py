"""`make run`: start the whole service in the foreground and stop all of it on Ctrl-C.

1. Redis: REDIS_URL if set, else an embedded redis-server on a Unix socket in var/redis/.
2. Database: migrate, collect static files, apply the registry file (BALANCER_CONFIG, default
   deploy/dev-config.yaml), make sure a development API key and an admin login exist.
3. Start the Celery workers, Celery beat (the sweeper), the web server (uvicorn, ASGI) and, once
   the workers have reported in, Flower (so that it sees their queues), each in its own session
   so a Ctrl-C reaches only this launcher, which then stops them, by PID, in order.
If any of them exits on its own, the launcher stops the others and exits with an error.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import redis

from balancer_project.redis_conn import WORKERS_KEY, redis_client

BASE_DIR = Path(__file__).resolve().parent.parent


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), *args], check=True, cwd=BASE_DIR)


def _dev_credentials(var_dir: Path) -> tuple[str, str]:
    """The development API key and admin password, created once and kept in var/ (mode 600):
    the password here, the key and the login by the app's `dev_credentials` command."""
    password = _kept_secret(var_dir / "dev-admin-password")
    _manage("dev_credentials", str(var_dir))
    return (var_dir / "dev-api-key").read_text().strip(), password


def _kept_secret(path: Path) -> str:
    """A random secret kept in `path` (mode 600), made the first time it is asked for."""
    secret = path.read_text().strip() if path.exists() else ""
    if not secret:
        secret = secrets.token_urlsafe(12)
        path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def _owner_only(var_dir: Path) -> None:
    """var/ holds the database (every prompt and answer, live admin sessions), Redis's files and
    the development credentials: readable by their owner only. The umask covers what the
    processes started from here create (SQLite's WAL and SHM files included); the walk mends
    what an earlier run left readable."""
    os.umask(0o077)
    var_dir.mkdir(parents=True, exist_ok=True)
    for path in [var_dir, *var_dir.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(mode & 0o700)


class Launcher:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        process = subprocess.Popen(
            args,
            cwd=BASE_DIR,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        self.children.append((name, process))

    def stop_all(self) -> None:
        # Web first (no new requests), then Flower, then the worker, which finishes what it runs.
        for name, process in reversed(self.children):
            if process.poll() is None:
                print(f"stopping {name} (pid {process.pid})", flush=True)
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(self.children):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print(f"{name} (pid {process.pid}) did not stop; killing it", flush=True)
                process.kill()
                process.wait()

    def _wait_for_workers(self, client: redis.Redis, count: int, since: float, timeout: float = 60.0) -> None:
        """Until `count` workers have reported themselves alive (completions.workers) since
        `since` (Redis time: reports left by an earlier run do not count), or `timeout` (then go
        on regardless)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            try:
                if client.zcount(WORKERS_KEY, since, "+inf") >= count:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.5)
        print("the workers are not all up yet; starting Flower anyway", flush=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "balancer_project.settings.local")
        var_dir = Path(os.environ.get("BALANCER_VAR_DIR", BASE_DIR / "var"))
        _owner_only(var_dir)
        embedded = None
        if os.environ.get("REDIS_URL_FILE") and not os.environ.get("REDIS_URL"):
            # As the settings read it (<NAME>_FILE), so that this process and its children agree.
            os.environ["REDIS_URL"] = Path(os.environ["REDIS_URL_FILE"]).read_text().strip()
        if not os.environ.get("REDIS_URL"):
            from balancer_project.embedded_redis import EmbeddedRedis

            embedded = EmbeddedRedis(var_dir / "redis").start()
            os.environ["REDIS_URL"] = embedded.url
            print(
                f"embedded Redis at {embedded.url} (pid {embedded.process.pid if embedded.process else '?'})"
            )
        os.environ.setdefault("BALANCER_CONFIG", str(BASE_DIR / "deploy" / "dev-config.yaml"))
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        code = 0
        try:
            _manage("migrate", "--noinput", "-v", "0")
            _manage("collectstatic", "--noinput", "-v", "0")
            _manage("apply_config")
            api_key, password = _dev_credentials(var_dir)
            # Flower asks for a login too; FLOWER_BASIC_AUTH (user:password) overrides.
            flower_login = os.environ.get("FLOWER_BASIC_AUTH") or (
                f"admin:{_kept_secret(var_dir / 'dev-flower-password')}"
            )
            host = os.environ.get("HOST", "127.0.0.1")
            port = os.environ.get("PORT", "8080")
            flower_port = os.environ.get("FLOWER_PORT", "5555")
            health_port = os.environ.get("HEALTH_PORT", "8081")
            python = sys.executable
            # One worker process runs Python on one core at a time: one per core (up to four).
            workers = int(os.environ.get("WORKER_PROCESSES") or min(os.cpu_count() or 1, 4))
            client = redis_client(os.environ["REDIS_URL"])
            try:
                since = float(client.time()[0])
            except redis.RedisError:
                since = time.time()  # Redis not reachable yet: the workers wait for it too
            for n in range(1, workers + 1):
                self.spawn(
                    f"worker {n}",
                    [
                        python,
                        "-m",
                        "celery",
                        "-A",
                        "balancer_project",
                        "worker",
                        "--hostname",
                        f"worker{n}@%h",
                        "--loglevel",
                        "INFO",
                    ],
                )
            self.spawn(
                "beat",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "balancer_project",
                    "beat",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                    str(var_dir / "celerybeat-schedule"),
                ],
            )
            self.spawn(
                "web",
                [
                    python,
                    "-m",
                    "uvicorn",
                    "balancer_project.asgi:application",
                    "--host",
                    host,
                    "--port",
                    port,
                    "--workers",
                    os.environ.get("WEB_PROCESSES", "1"),
                    "--no-access-log",
                    # The lifespan opens the probe port (balancer_project.health).
                    "--lifespan",
                    "on",
                    # Thousands of clients may connect at once (each waits without a thread).
                    "--backlog",
                    "4096",
                    # No proxy runs in front of `make run`: uvicorn would otherwise believe any
                    # local client's X-Forwarded-For, and a login guesser could change address
                    # with every try. FORWARDED_ALLOW_IPS (a proxy's address) turns it back on.
                    "--proxy-headers" if os.environ.get("FORWARDED_ALLOW_IPS") else "--no-proxy-headers",
                ],
                env={"BALANCER_HEALTH_PORT": health_port, "BALANCER_HEALTH_HOST": host},
            )
            # Flower asks the workers which queues they consume once, when it starts (and again
            # on its Workers page's Refresh): started once they are up, its Broker page lists
            # every model's queue, not only the default one.
            self._wait_for_workers(client, workers, since=since)
            self.spawn(
                "flower",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "balancer_project",
                    "flower",
                    f"--port={flower_port}",
                    f"--address={host}",
                ],
                # In Flower's environment, not on its command line, which every local user can read.
                # Flower turns the workers' task events on by itself every few seconds unless told
                # not to: they stay as BALANCER_TASK_EVENTS says (four more messages a request).
                env={"FLOWER_BASIC_AUTH": flower_login, "FLOWER_ENABLE_EVENTS": _task_events()},
            )
            shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
            print(
                f"""
  LLM Request Balancer is starting
    API          http://{shown}:{port}/api/v1/completions   (browsable; docs at /api/docs/)
    Admin        http://{shown}:{port}/admin/   user: admin   password: {password}
    Dashboard    http://{shown}:{port}/admin/dashboard/   (queues and limits, live; same login)
    Flower       http://{shown}:{flower_port}/   login: {flower_login}
    Health       http://{shown}:{port}/ready   liveness probes: http://{shown}:{health_port}/health
    API key      {api_key}

  Try:  curl -s http://{shown}:{port}/api/v1/completions -H 'Authorization: Bearer {api_key}' \\
          -H 'Content-Type: application/json' \\
          -d '{{"provider": "mock", "model": "mock-gpt", "payload": {{"messages": [{{"role": "user", "content": "hi"}}]}}}}'

  Ctrl-C stops everything started here.
""",
                flush=True,
            )
            parent = os.getppid()
            while not self.stopping:
                if os.getppid() != parent:
                    # Whoever started us (make, a terminal) is gone: don't leave the stack orphaned.
                    print("parent process exited; stopping", flush=True)
                    break
                for name, process in self.children:
                    if process.poll() is not None:
                        print(f"{name} exited with {process.returncode}; stopping the rest", flush=True)
                        self.stopping = True
                        code = 1
                time.sleep(0.5)
        except subprocess.CalledProcessError as exc:
            print(f"set-up step failed: {' '.join(map(str, exc.cmd))}", file=sys.stderr)
            code = 1
        finally:
            self.stop_all()
            if embedded is not None:
                embedded.stop()
        return code


def _task_events() -> str:
    """BALANCER_TASK_EVENTS as Flower's FLOWER_ENABLE_EVENTS reads it."""
    return (
        "true"
        if os.environ.get("BALANCER_TASK_EVENTS", "").lower() in ("1", "true", "yes", "on")
        else "false"
    )


def main() -> None:
    sys.exit(Launcher().run())


if __name__ == "__main__":
    main()
