"""Secrets and production settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from tests.fake_upstream import ANTHROPIC_KEY, OPENAI_KEY
from tests.live import ROOT

SECRETS = (OPENAI_KEY, ANTHROPIC_KEY)


def test_provider_keys_never_reach_the_database_responses_admin_or_logs(
    api: httpx.Client, web: Any, run_dir: Path, django_db_blocker: Any, marker: str, capsys: Any
) -> None:
    seen: list[str] = []
    for provider, model in (("openai", "gpt-test"), ("anthropic", "claude-test")):
        payload = {"max_tokens": 2, "messages": [{"role": "user", "content": marker}]}
        ok = api.post("/completions", json={"provider": provider, "model": model, "payload": payload})
        echoed = api.post(
            "/completions",
            json={"provider": provider, "model": model, "payload": {**payload, "fake": {"echo_key": True}}},
        )
        assert ok.json()["status"] == "succeeded" and echoed.json()["status"] == "failed"
        assert "[redacted]" in echoed.text  # the upstream quoted the key; the balancer did not keep it
        seen += [ok.text, echoed.text, api.get(echoed.json()["links"]["self"]).text]
    seen.append(api.get("/completions").text)
    seen.append(api.get("/queues").text)
    seen.append(httpx.get(f"{web.url}/v1/models", headers=dict(api.headers)).text)
    with django_db_blocker.unblock():
        call_command("dumpdata", "--indent", "0")
        seen.append(capsys.readouterr().out)
        admin = get_user_model().objects.create_superuser(
            f"sec{marker[-6:]}", "s@example.com", "pw-tests-only"
        )
        client = Client()
        client.force_login(admin)
        from completions.models import CompletionRequest, Provider

        for path in ["/admin/completions/provider/", "/admin/completions/completionrequest/"]:
            seen.append(client.get(path).content.decode())
        for provider in Provider.objects.all():
            seen.append(client.get(f"/admin/completions/provider/{provider.pk}/change/").content.decode())
        for row in CompletionRequest.objects.filter(payload__messages__0__content=marker)[:4]:
            seen.append(client.get(f"/admin/completions/completionrequest/{row.pk}/change/").content.decode())
    for log in (run_dir / "logs").glob("*.log"):
        seen.append(log.read_text(errors="replace"))
    for text in seen:
        for secret in SECRETS:
            assert secret not in text


def _settings_import(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "balancer_project.settings.production", **env},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DJANGO_ALLOWED_HOSTS": "x"}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "s" * 50, "DJANGO_DEBUG": "true", "DJANGO_ALLOWED_HOSTS": "x"}, "DEBUG"),
    ],
)
def test_production_settings_refuse_development_defaults(env: dict[str, str], message: str) -> None:
    done = _settings_import(**env)
    assert done.returncode != 0
    assert message in done.stderr


def test_production_settings_pass_the_deploy_checks(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(
        DJANGO_SETTINGS_MODULE="balancer_project.settings.production",
        DJANGO_SECRET_KEY="k" * 20 + "production-secret-for-the-check-only" + "q" * 10,
        DJANGO_ALLOWED_HOSTS="balancer.example.com",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_runs_every_role_against_one_database_and_redis() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"web", "worker", "beat", "flower", "postgres", "redis", "migrate"} <= set(services)
    assert "--basic-auth" in " ".join(services["flower"]["command"])
    assert "noeviction" in services["redis"]["command"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "balancer_project.settings.production" in dockerfile
