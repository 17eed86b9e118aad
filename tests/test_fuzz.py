"""The API fuzzed from its own OpenAPI schema (schemathesis): whatever the input, never a 5xx.

A web process of its own, whose waits are capped at a second or two, so that generated `wait`
values cannot hold the suite up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.live import WebServer

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def fuzz_web(stack_env: dict[str, str], run_dir: Path, worker: Any) -> Iterator[WebServer]:
    server = WebServer(
        {**stack_env, "BALANCER_MAX_WAIT_SECONDS": "1", "BALANCER_COMPAT_MAX_WAIT_SECONDS": "2"},
        run_dir / "logs",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_key(make_key: Any) -> str:
    return make_key("fuzz")


def test_no_input_makes_the_api_fail_with_a_server_error(fuzz_web: WebServer, fuzz_key: str) -> None:
    # Cases are drawn per operation with hypothesis directly: schemathesis' pytest plugin does not
    # run under pytest 9 yet.
    schema = schemathesis.openapi.from_url(f"{fuzz_web.url}/api/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(base_url=fuzz_web.url, headers=headers, timeout=30)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
            if response.status_code >= 400 and case.formatted_path.startswith("/api/"):
                assert "error" in response.json(), where  # every error is JSON in the API's one shape

        check()
