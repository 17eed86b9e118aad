"""Secrets and production settings."""

from __future__ import annotations

import json
import os
import re
import secrets
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


def _clean(text: str) -> None:
    """No provider key in `text`, nor in any JSON in it once decoded (where `\\u` escapes
    would hide one from a plain search)."""
    candidates = [text]
    for line in text.splitlines():
        line = line.removeprefix("data:").strip()
        for piece in (line, text):
            try:
                candidates.append(json.dumps(json.loads(piece), ensure_ascii=False))
            except ValueError:
                pass
    for candidate in candidates:
        for secret in SECRETS:
            assert secret not in candidate, candidate[:500]


@pytest.mark.parametrize(("provider", "model"), [("openai", "gpt-test"), ("anthropic", "claude-test")])
def test_a_provider_key_the_upstream_echoes_anywhere_is_scrubbed_from_all_it_says(
    api: httpx.Client, web: Any, django_db_blocker: Any, marker: str, provider: str, model: str
) -> None:
    from balancer_project.redis_conn import get_redis
    from completions.models import CompletionRequest
    from completions.streaming import stream_key

    echo = {"fake": {"echo_key": "everywhere"}}
    message = [{"role": "user", "content": marker}]
    headers = {"Authorization": api.headers["authorization"], "x-api-key": api.headers["authorization"][7:]}
    path = "/v1/chat/completions" if provider == "openai" else "/v1/messages"
    said = []
    plain = httpx.post(
        f"{web.url}{path}",
        json={"model": model, "max_tokens": 4, "messages": message, **echo},
        headers=headers,
    )
    assert plain.status_code == 200 and "[redacted]" in plain.text
    said += [plain.text, str(plain.headers)]
    with httpx.stream(
        "POST",
        f"{web.url}{path}",
        json={"model": model, "max_tokens": 4, "messages": message, "stream": True, **echo},
        headers=headers,
        timeout=30,
    ) as streamed:
        said += [streamed.read().decode(), str(streamed.headers)]
    assert "[redacted]" in said[-2]
    native = api.post(
        "/completions",
        json={
            "provider": provider,
            "model": model,
            "payload": {"max_tokens": 4, "messages": message, **echo},
        },
    )
    assert native.json()["status"] == "succeeded"
    said += [native.text, api.get(native.json()["links"]["self"]).text]
    with django_db_blocker.unblock():
        rows = list(CompletionRequest.objects.filter(payload__messages__0__content=marker))
        assert len(rows) == 3
        for row in rows:
            said.append(json.dumps([row.response, row.error], ensure_ascii=False))
            said.append(str(get_redis().xrange(stream_key(str(row.id)))))
    for text in said:
        _clean(text)


@pytest.mark.parametrize(("provider", "model"), [("openai", "gpt-test"), ("anthropic", "claude-test")])
def test_an_error_page_spelling_the_key_in_escapes_is_relayed_without_it(
    api: httpx.Client, provider: str, model: str, marker: str
) -> None:
    payload = {
        "max_tokens": 4,
        "messages": [{"role": "user", "content": marker}],
        "fake": {"echo_key": "page"},
    }
    answer = api.post("/completions", json={"provider": provider, "model": model, "payload": payload})
    assert answer.json()["status"] == "failed"
    for text in (answer.text, api.get(answer.json()["links"]["self"]).text):
        error_text = json.dumps(json.loads(text)["error"])
        assert "[redacted]" in error_text
        for decoded in (error_text, error_text.encode().decode("unicode_escape")):
            for secret in SECRETS:
                assert secret not in decoded


def _production_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """A production environment that starts, with `env` on top (a value of "" removes it)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "BALANCER_", "FLOWER_"))}
    full = {
        **clean,
        "DJANGO_SETTINGS_MODULE": "balancer_project.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "balancer.example.com",
        "BALANCER_METRICS_TOKEN": secrets.token_urlsafe(30),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        **env,
    }
    return {k: v for k, v in full.items() if v != ""}


def _start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """What every role does first: load the settings and the apps."""
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=_production_env(tmp_path, **env),
        capture_output=True,
        text=True,
    )


def _repository_secrets() -> set[str]:
    """Every value the repository assigns to a production secret: examples, defaults, build steps."""
    names = r"(?:DJANGO_SECRET_KEY|SECRET_KEY|BALANCER_METRICS_TOKEN|FLOWER_BASIC_AUTH|POSTGRES_PASSWORD)"
    assignment = re.compile(names + r"""\s*(?:=|:)\s*["']?([^\s"'$}]+)""")
    default = re.compile(names + r""".*default=["']([^"']+)""")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    found: set[str] = set()
    for name in tracked:
        path = ROOT / name
        if not path.is_file() or name.startswith("tests/"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            for pattern in (assignment, default):
                found.update(m.group(1) for m in pattern.finditer(line) if len(m.group(1)) >= 6)
    return found


def test_every_secret_written_in_the_repository_is_refused_in_production(tmp_path: Path) -> None:
    from balancer_project.production_checks import flower_auth_problem, secret_key_problem, token_problem

    found = _repository_secrets()
    assert "dev-insecure-secret-key-change-me" in found  # the scan sees the settings' default
    for value in found:
        assert secret_key_problem(value), value
        assert token_problem("BALANCER_METRICS_TOKEN", value), value
        assert flower_auth_problem(value if ":" in value else f"admin:{value}"), value
    refused = _start(tmp_path, DJANGO_SECRET_KEY="change-me-to-50-random-characters")
    assert refused.returncode != 0 and "example value" in refused.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DJANGO_SECRET_KEY": ""}, "Set DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "s" * 60}, "at least 50 random characters"),
        ({"DJANGO_SECRET_KEY": "x7" * 30 + "example"}, "example value"),
        ({"DJANGO_DEBUG": "true"}, "DEBUG"),
        ({"DJANGO_ALLOWED_HOSTS": "*"}, "may not contain '*'"),
        ({"DJANGO_ALLOWED_HOSTS": "balancer.example.com,*"}, "may not contain '*'"),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "Set DJANGO_ALLOWED_HOSTS"),
        ({"BALANCER_METRICS_TOKEN": ""}, "Set BALANCER_METRICS_TOKEN"),
        ({"BALANCER_METRICS_TOKEN": "change-me"}, "BALANCER_METRICS_TOKEN must be"),
        ({"FLOWER_BASIC_AUTH": "admin:change-me"}, "FLOWER_BASIC_AUTH"),
        ({"DATABASE_URL": "postgres://balancer:change-me@db:5432/balancer"}, "DATABASE_URL's password"),
        ({"DJANGO_SECURE_SSL_REDIRECT": "false"}, "security.W008"),
        ({"DJANGO_SECURE_COOKIES": "false"}, "security.W012"),
        ({"DJANGO_WAIVED_CHECKS": "security.W008"}, "needs the form check.id=reason"),
    ],
)
def test_production_refuses_to_start_with_development_or_example_values(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    done = _start(tmp_path, **env)
    assert done.returncode != 0
    assert message in done.stderr


def test_a_deploy_warning_waived_with_a_reason_lets_production_start(tmp_path: Path) -> None:
    waived = {
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_WAIVED_CHECKS": "security.W008=TLS ends at the proxy, which redirects to https",
    }
    assert _start(tmp_path).returncode == 0
    done = _start(tmp_path, **waived)
    assert done.returncode == 0, done.stderr
    assert "security.W008 waived: TLS ends at the proxy" in done.stderr  # said at every start
    check = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_production_env(tmp_path, **waived),
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_compose_file_runs_every_role_against_one_database_and_redis() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"web", "worker", "beat", "flower", "postgres", "redis", "migrate"} <= set(services)
    assert "FLOWER_BASIC_AUTH:?" in " ".join(services["flower"]["command"])  # no login, no Flower
    # Flower's /metrics and /healthcheck need no login: only this host may reach them.
    assert all(p.startswith("127.0.0.1:") for p in services["flower"]["ports"])
    assert "noeviction" in services["redis"]["command"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "balancer_project.settings.production" in dockerfile


def test_upstream_error_text_cannot_begin_a_log_record_of_its_own(
    api: httpx.Client, web: Any, worker: Any, marker: str
) -> None:
    """An upstream whose 500 reflects the prompt (here: the fake's error body, chosen by the
    client) has its text logged (each retry is) escaped on one line, never as a record with a
    forged time and level at column 0."""
    forged = f"2020-01-01 00:00:00,000 CRITICAL forged [{marker}] all keys leaked"
    body = {"error": {"message": f"bad\n{forged}\r\n\x1b[2K{forged}\u2028{forged}", "type": "server_error"}}
    fake = {"status": 500, "body": body}  # tried BALANCER_MAX_ATTEMPTS times, then failed
    answer = api.post(
        "/completions",
        json={
            "provider": "openai",
            "model": "gpt-test",
            "payload": {"max_tokens": 2, "messages": [{"role": "user", "content": marker}], "fake": fake},
            "wait": 30,
        },
    )
    assert answer.json()["status"] == "failed", answer.text
    logs = worker.log_tail(10**7) + web.log_tail(10**7)
    mentions = [line for line in logs.splitlines() if marker in line]
    assert mentions, logs[-3000:]  # the retries' warnings quote it
    for line in mentions:
        assert not line.startswith("2020-01-01"), line
        assert "\x1b" not in line and "\u2028" not in line


def test_production_secrets_may_come_from_files_as_kubernetes_and_docker_mount_them(tmp_path: Path) -> None:
    """`<NAME>_FILE` names a file holding a setting (its trailing newline dropped): the secret key,
    the database and Redis URLs, the metrics token, in production as elsewhere."""
    key = secrets.token_urlsafe(50)
    files = {
        "DJANGO_SECRET_KEY": key,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'from-file.sqlite3'}",
        "REDIS_URL": "redis://127.0.0.1:6390/3",
        "BALANCER_METRICS_TOKEN": "metrics-token-from-a-file-0123456789",
    }
    env = {}
    for name, value in files.items():
        path = tmp_path / name.lower()
        path.write_text(value + "\n")
        env[f"{name}_FILE"] = str(path)
        env[name] = ""  # not in the environment at all
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.SECRET_KEY, s.DATABASES['default']['NAME'], s.REDIS_URL, s.BALANCER_METRICS_TOKEN)",
        ],
        cwd=ROOT,
        env=_production_env(tmp_path, **env),
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.split() == [
        key,
        str(tmp_path / "from-file.sqlite3"),
        files["REDIS_URL"],
        files["BALANCER_METRICS_TOKEN"],
    ]
