"""`make run` as a new user runs it: the launcher starts the whole stack (embedded Redis, SQLite,
web, worker, beat, Flower) in a var/ directory of its own, and everything it leaves there is
readable by its owner only; Flower asks for the login the launcher prints."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live import ROOT, free_port, wait_until


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, int, int, int]]:
    """`make run`'s launcher, once for this module; stopped with SIGTERM as Ctrl-C would."""
    tmp_path = tmp_path_factory.mktemp("make-run")
    var_dir = tmp_path / "var"
    var_dir.mkdir(mode=0o755)
    earlier = var_dir / "left-by-an-earlier-run"
    earlier.write_text("x")
    earlier.chmod(0o644)
    port, flower_port, health_port = free_port(), free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "FLOWER_BASIC_AUTH")
    }
    env.update(
        BALANCER_VAR_DIR=str(var_dir),
        PORT=str(port),
        FLOWER_PORT=str(flower_port),
        HEALTH_PORT=str(health_port),
        WORKER_PROCESSES="1",
        PYTHONUNBUFFERED="1",
    )
    out = tmp_path / "launcher.out"
    with out.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "balancer_project.launcher"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: "Ctrl-C stops everything" in out.read_text(), 120, "the launcher's banner")

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200 and bool(
                    httpx.get(f"http://127.0.0.1:{flower_port}/", timeout=2)
                )
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "web and Flower")
        yield var_dir, out, port, flower_port, health_port
    finally:
        process.send_signal(signal.SIGTERM)  # the launcher stops what it started, by PID
        process.wait(timeout=60)


def test_make_run_keeps_var_readable_by_its_owner_only(launched: tuple[Path, Path, int, int, int]) -> None:
    var_dir, _, port, _, _ = launched
    key = (var_dir / "dev-api-key").read_text().strip()
    done = httpx.post(
        f"http://127.0.0.1:{port}/api/v1/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "provider": "mock",
            "model": "mock-gpt",
            "payload": {"messages": [{"role": "user", "content": "hi"}]},
        },
        timeout=30,
    )
    assert done.json()["status"] == "succeeded"  # the database and its WAL have been written
    names = {p.name for p in var_dir.rglob("*")}
    assert {
        "db.sqlite3",
        "db.sqlite3-wal",
        "dev-api-key",
        "dev-admin-password",
        "dev-flower-password",
    } <= names
    opened = [p for p in [var_dir, *var_dir.rglob("*")] if not p.is_symlink()]
    readable = {
        str(p.relative_to(var_dir)): oct(p.stat().st_mode & 0o777) for p in opened if p.stat().st_mode & 0o077
    }
    assert readable == {}
    assert stat.S_IMODE(var_dir.stat().st_mode) == 0o700


def test_make_run_flower_asks_for_the_printed_login(launched: tuple[Path, Path, int, int, int]) -> None:
    var_dir, out, _, flower_port, _ = launched
    login = re.search(r"Flower .* login: (\S+):(\S+)", out.read_text())
    assert login is not None
    user, password = login.groups()
    assert password == (var_dir / "dev-flower-password").read_text().strip()
    url = f"http://127.0.0.1:{flower_port}/workers"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, auth=(user, "wrong"), timeout=10).status_code == 401
    assert httpx.get(url, auth=(user, password), timeout=10).status_code == 200


def test_make_run_answers_liveness_probes_on_the_printed_port(
    launched: tuple[Path, Path, int, int, int],
) -> None:
    _, out, _, _, health_port = launched
    assert f"liveness probes: http://localhost:{health_port}/health" in out.read_text()
    probe = httpx.get(f"http://127.0.0.1:{health_port}/health", timeout=10)
    assert (probe.status_code, probe.json()) == (200, {"status": "ok"})


def test_make_run_serves_the_dashboard_and_flower_lists_the_model_queues(
    launched: tuple[Path, Path, int, int, int],
) -> None:
    var_dir, out, port, flower_port, _ = launched
    banner = out.read_text()
    assert f"Dashboard    http://localhost:{port}/admin/dashboard/" in banner
    page = httpx.get(f"http://127.0.0.1:{port}/admin/dashboard/", timeout=10)
    assert page.status_code == 302 and "/admin/login/" in page.headers["location"]
    script = httpx.get(f"http://127.0.0.1:{port}/static/completions/dashboard.js", timeout=10)
    assert script.status_code == 200 and "state" in script.text  # collected and served
    password = (var_dir / "dev-flower-password").read_text().strip()

    # Flower started once the worker was up: its broker page has every model's queue (once its
    # first look at the workers, which takes up to a second, is in).
    def listed() -> bool:
        broker = httpx.get(f"http://127.0.0.1:{flower_port}/broker", auth=("admin", password), timeout=20)
        assert broker.status_code == 200
        return all(q in broker.text for q in ("balancer.default", "llm.mock.mock-gpt", "llm.group:mock-pool"))

    wait_until(listed, 20, "Flower's broker page to list the model queues")


def test_make_run_logs_quietly(launched: tuple[Path, Path, int, int, int]) -> None:
    """A fresh start warns of nothing (a new Redis, a new registry are news, not problems); a
    client's 4xx is INFO; an idle minute writes almost nothing (beat's ticks are not logged)."""
    _, out, port, _, _ = launched
    httpx.get(f"http://127.0.0.1:{port}/api/v1/completions", headers={"Authorization": "Bearer lb-wrong"})
    time.sleep(1)
    before = out.read_text().splitlines()
    loud = [line for line in before if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    assert loud == [], loud
    # Flower leaves the workers' task events as configured (off), not "enabled by remote".
    assert not [line for line in before if "enabled by remote" in line]
    assert any("INFO django.request" in line and "Unauthorized" in line for line in before)
    assert len([line for line in before if "Unauthorized" in line]) == 1  # once, not twice
    time.sleep(20)
    idle = out.read_text().splitlines()[len(before) :]
    assert len(idle) <= 2, idle  # 20 s: ten tends, nothing said


def test_make_run_login_throttle_cannot_be_dodged_with_x_forwarded_for(
    launched: tuple[Path, Path, int, int, int],
) -> None:
    """No proxy is in front of `make run`: a header naming another address for every guess is
    not believed, and the guesser (127.0.0.1) is locked out at the limit. (Last in the module: it
    locks this launcher's admin for 127.0.0.1.)"""
    _, _, port, _, _ = launched
    statuses = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as browser:
        for n in range(12):
            form = browser.get("/admin/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
            assert token is not None, form.text[:300]
            answer = browser.post(
                "/admin/login/",
                data={"username": "admin", "password": f"guess-{n}", "csrfmiddlewaretoken": token.group(1)},
                headers={
                    "X-Forwarded-For": f"203.0.113.{n + 1}",
                    "Referer": f"http://127.0.0.1:{port}/admin/login/",
                },
            )
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                break
    assert statuses[-1] == 429 and len(statuses) <= 11, statuses
