"""The dashboard and the admin in a real browser: headless Chromium (the system's, driven by
Playwright) signs in, watches the dashboard while requests queue and drain, and checks that the
admin's lists fit a 1,400 px screen.

Skipped when no Chromium is installed (`.ci/run` installs Debian's `chromium`). With
BALANCER_SCREENSHOTS=DIR it also saves the screenshots docs/operations.md shows ("Watching the queues").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model

from tests.completions.test_groups import chat, wait_all
from tests.live import ROOT, WebServer

CHROMIUM = os.environ.get("BALANCER_CHROMIUM") or next(
    (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
    None,
)
SCREENSHOTS = os.environ.get("BALANCER_SCREENSHOTS")

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium on this machine: install Debian's chromium (.ci/run does) or set BALANCER_CHROMIUM",
    ),
]

WIDTH = 1400
ADMIN_LISTS = (
    "completions/completionrequest",
    "completions/provider",
    "completions/servedmodel",
    "completions/modelgroup",
    "completions/apikey",
    "ratelimit/quota",
)


@pytest.fixture(scope="module")
def static_web(stack_env: dict[str, str], run_dir: Path) -> Iterator[WebServer]:
    """A web process that serves the collected static files (the admin's and the dashboard's), as
    `make run` does."""
    env = {**stack_env, "DJANGO_STATIC_ROOT": str(run_dir / "static")}
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    server = WebServer(env, run_dir / "logs")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def staff_login(django_db_blocker: Any) -> tuple[str, str]:
    username, password = f"staff-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    with django_db_blocker.unblock():
        get_user_model().objects.create_superuser(username, f"{username}@example.com", password)
    return username, password


@contextmanager
def signed_in_page(base_url: str, login: tuple[str, str], path: str) -> Iterator[Any]:
    """A headless Chromium page, signed in through the admin's login form, at `path`.
    (Playwright's synchronous API runs an event loop on this thread: the database is done with
    before it starts.)"""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            page.set_default_timeout(30_000)
            script_errors: list[str] = []
            page.on("pageerror", lambda error: script_errors.append(str(error)))
            page.goto(f"{base_url}{path}")
            assert "/admin/login/" in page.url  # staff only: the login form first
            page.fill("#id_username", login[0])
            page.fill("#id_password", login[1])
            page.click("input[type=submit]")
            page.wait_for_url(f"{base_url}{path}")
            yield page
            assert script_errors == []  # the dashboard's script never threw
        finally:
            browser.close()


def figure(page: Any, line: str, name: str) -> str:
    return str(page.locator(f'[data-line="{line}"] .dash-figures [data-figure="{name}"]').inner_text())


def number(text: str) -> float:
    return float(text.replace("k", "e3")) if text not in ("–", "") else 0.0


def test_the_dashboard_shows_a_queue_filling_and_draining(
    static_web: WebServer, api: httpx.Client, make_key: Any, marker: str, staff_login: tuple[str, str]
) -> None:
    other = httpx.Client(
        base_url=api.base_url, headers={"Authorization": f"Bearer {make_key('dashboard-other')}"}, timeout=60
    )
    line = "group:gpt-fair"  # one deployment, 10 requests per second, shared fairly between keys
    with signed_in_page(static_web.url, staff_login, "/admin/dashboard/") as page:
        page.wait_for_selector(f'[data-line="{line}"]')
        assert page.locator("[data-figure=workers]").inner_text() != "–"
        # An idle model without limits is hidden until asked for; a group's deployment is shown
        # under its group only.
        assert page.locator('#dash-models tr[data-line="model:mock/mock-gpt"]').count() == 0
        page.locator("#dash-models [data-action=show-all]").click()
        page.wait_for_selector('#dash-models tr[data-line="model:mock/mock-gpt"]')
        assert page.locator('#dash-models tr[data-line="model:mock/mock-fair"]').count() == 0
        assert page.locator("#dash-keys table, #dash-keys p").count() == 1
        calls_before = number(figure(page, line, "calls-per-minute"))

        # 120 requests from two client keys: about ten seconds of queue.
        clients = (api, other)

        def send(i: int) -> str:
            body = {"model": "gpt-fair", "payload": chat(marker, i), "wait": 0}
            return str(clients[i % 2].post("/completions", json=body).json()["id"])

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(send, range(120)))
        # The page redraws by itself: the line fills up...
        page.wait_for_function(
            """line => Number(document.querySelector(`[data-line="${line}"] .dash-figures [data-figure=waiting]`)
                   .textContent) > 0""",
            arg=line,
        )
        assert page.locator(f'[data-line="{line}"] tr[data-flow]').count() >= 2  # both keys, by name
        # While requests wait, the line reads as fully used, never as idle.
        if number(figure(page, line, "waiting")) > 0:
            assert figure(page, line, "utilisation") == "100 %"
        # ...its grants per minute and upstream calls per minute climb, and it drains.
        page.wait_for_function(
            """line => parseFloat(document.querySelector(
                   `[data-line="${line}"] .dash-figures [data-figure=grants-per-minute]`).textContent) > 0""",
            arg=line,
        )
        # Grants are counted over what the page saw of the last minute, never extrapolated: at 10
        # a second with a burst of 10, no window shows more than 10 per second of it, plus 10.
        counted = figure(page, line, "grants-per-minute")
        match = re.fullmatch(r"(\d+)(?: in (\d+) s)?", counted)
        assert match is not None, counted
        grants, window = int(match.group(1)), int(match.group(2) or 60)
        assert grants <= 10 * (window + 1) + 10, counted
        # The whole page fits the screen's width, its tables included.
        assert page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth") <= 0
        page.wait_for_function(
            """([line, before]) => parseFloat(document.querySelector(
                   `[data-line="${line}"] .dash-figures [data-figure=calls-per-minute]`).textContent) >= before + 60""",
            arg=[line, calls_before],
        )
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard.png"))
        for n, client in enumerate(clients):
            mine = ids[n::2]
            assert [r["status"] for r in wait_all(client, mine)] == ["succeeded"] * len(mine)
        page.wait_for_function(
            """line => document.querySelector(`[data-line="${line}"] .dash-figures [data-figure=waiting]`)
                   .textContent === '0'""",
            arg=line,
        )
        assert "errornote" not in (page.locator("#dash-status").get_attribute("class") or "")
        # The live chart of the line's depth drew a point at every refresh it saw.
        samples = page.locator(f'[data-line="{line}"] svg.dash-depth').get_attribute("data-samples")
        assert int(samples or 0) >= 3
        # The same session reads the request history: a request's page, bodies pretty-printed.
        page.goto(f"{static_web.url}/admin/completions/completionrequest/{ids[0]}/change/")
        assert marker in page.locator("pre").first.inner_text()
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "request.png"))
    other.close()


def test_the_admin_lists_fit_a_1400_px_screen(
    static_web: WebServer, api: httpx.Client, marker: str, staff_login: tuple[str, str]
) -> None:
    # Rows in every list: a finished request (with its tokens, times and deployment).
    done = api.post("/completions", json={"model": "mock-pool", "payload": chat(marker), "wait": 30}).json()
    assert done["status"] == "succeeded"
    with signed_in_page(static_web.url, staff_login, "/admin/") as page:
        assert page.locator('a[href="/admin/dashboard/"]').count() == 1  # the index leads to the dashboard
        widths = {}
        for path in ADMIN_LISTS:
            page.goto(f"{static_web.url}/admin/{path}/")
            assert page.locator("#changelist").count() == 1, path
            # The page, and the results table within its own scrolling box.
            overflow = page.evaluate(
                """() => Math.max(
                    document.documentElement.scrollWidth - window.innerWidth,
                    ...[...document.querySelectorAll("#changelist .results")].map(b => b.scrollWidth - b.clientWidth))"""
            )
            widths[path] = overflow
        assert {p: o for p, o in widths.items() if o > 0} == {}
