"""/health: the process is up (its event loop answers), on the main port and on a port of its
own. (/ready, whether it can serve, is the app's to say: completions.ops.)"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from balancer_project import probe
from balancer_project.probe import HEARTBEAT_SECONDS

HEALTHY = b'{"status": "ok"}'

logger = logging.getLogger(__name__)


@csrf_exempt  # a POST gets its 405, not a CSRF 403
@require_safe
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


class Liveness:
    """`GET /health` answered on the event loop, in front of Django: liveness means the loop
    answers, and a probe must not queue behind views on the web threads (thousands of clients
    connecting at once kept it waiting 24 s). Every other request, a POST to /health included
    (its JSON 405), goes on to `app`.

    It also takes the ASGI lifespan (Django has no use for it): at start-up, on the server's own
    event loop, it opens the probe port (BALANCER_HEALTH_PORT, see ProbePort)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.probe: ProbePort | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope["path"] == "/health" and scope["method"] in ("GET", "HEAD"):
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(HEALTHY)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": HEALTHY if scope["method"] == "GET" else b""})
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if settings.BALANCER_HEALTH_PORT:
                    self.probe = ProbePort(
                        host=settings.BALANCER_HEALTH_HOST,
                        port=settings.BALANCER_HEALTH_PORT,
                        stall_seconds=settings.BALANCER_HEALTH_STALL_SECONDS,
                    )
                    try:
                        self.probe.start()
                    except OSError as exc:  # the port is taken or the host wrong: a setting to fix
                        await send({"type": "lifespan.startup.failed", "message": f"the probe port: {exc}"})
                        return
                    logger.info("liveness probes on %s", settings.BALANCER_HEALTH_PORT)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.probe is not None:
                    self.probe.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


class ProbePort:
    """The web's side of the probe port (BALANCER_HEALTH_PORT): starts the probe process
    (balancer_project.probe) and, from the web's event loop, writes it a heartbeat once a second —
    the proof that the loop runs. A probe process that died is started again at the next beat."""

    START_SECONDS = 10.0

    def __init__(self, *, host: str, port: int, stall_seconds: float) -> None:
        # Run as a file, not `-m balancer_project.probe`: the package would load Celery first
        # (42 MiB against 21). -P: this folder's modules (celery.py…) must not shadow any other.
        self.args = [sys.executable, "-P", str(Path(probe.__file__)), host, str(port), str(stall_seconds)]
        self.process: subprocess.Popen[bytes] | None = None
        self.beat: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start the probe process and the heartbeat; OSError when the port cannot be opened."""
        self._spawn()
        self._beat()

    def _spawn(self) -> None:
        # Its stderr is the web's: a port it cannot bind is explained in the web's log.
        process = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], self.START_SECONDS)
        if not ready or process.stdout.readline().strip() != b"ready":
            process.kill()
            process.wait()
            raise OSError(f"the probe process did not open port {self.args[-2]} (exit {process.returncode})")
        os.set_blocking(process.stdin.fileno(), False)
        self.process = process

    def _beat(self) -> None:
        """Runs on the web's event loop."""
        assert self.process is not None and self.process.stdin is not None
        try:
            os.write(self.process.stdin.fileno(), b".")
        except BlockingIOError:
            pass  # the probe has not read the last beats yet: it has heard from this loop
        except OSError:
            logger.error("the probe process exited (code %s); starting it again", self.process.poll())
            self.process.wait()
            try:
                self._spawn()
            except OSError:
                logger.exception("the probe process could not be started again; next try in a second")
        self.beat = asyncio.get_running_loop().call_later(HEARTBEAT_SECONDS, self._beat)

    def stop(self) -> None:
        if self.beat is not None:
            self.beat.cancel()
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()  # the probe ends when the web's end of the pipe closes
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
