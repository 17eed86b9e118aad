"""Swagger's "Try it out" works: every example body the schema offers, sent as Swagger would send
it to the live stack, succeeds; and every compatible operation has one (without, Swagger sends
`{"additionalProp1": "string"}`)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

# Operations that act on what an earlier one made (an uploaded file, a batch): their ids cannot
# be in a static example. tests/completions/test_batch_api.py runs them through the SDKs.
AFTER_ANOTHER_STEP = {
    "/v1/files",
    "/v1/batches",
    "/v1/batches/{public_id}/cancel",
    "/v1/messages/batches/{public_id}/cancel",
}


def _examples(operation: dict[str, Any]) -> list[Any]:
    content = (operation.get("requestBody") or {}).get("content", {}).get("application/json", {})
    return [e["value"] for e in (content.get("examples") or {}).values()]


def test_every_example_in_the_schema_succeeds_against_the_live_stack(
    web: Any, worker: Any, make_key: Any
) -> None:
    schema = httpx.get(f"{web.url}/api/schema/?format=json", timeout=30).json()
    headers = {"Authorization": f"Bearer {make_key('swagger')}"}
    sent = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method != "post" or path in AFTER_ANOTHER_STEP:
                continue
            examples = _examples(operation)
            if path.startswith("/v1/"):
                assert examples, f"{path} has no example: Swagger would send additionalProp1"
            for body in examples:
                answer = httpx.post(f"{web.url}{path}", json=body, headers=headers, timeout=60)
                assert answer.status_code in (200, 201, 202), (
                    path,
                    body,
                    answer.status_code,
                    answer.text[:300],
                )
                if body.get("stream"):
                    assert "data:" in answer.text
                sent.append(path)
    assert {
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/batches",
    } <= set(sent)
    assert "/api/v1/completions" in sent
    # The GET operations with a path example.
    retrieve = schema["paths"]["/v1/models/{model_id}"]["get"]
    example = retrieve["parameters"][0]["examples"]
    model_id = next(iter(example.values()))["value"]
    assert httpx.get(f"{web.url}/v1/models/{model_id}", headers=headers, timeout=30).status_code == 200
    assert httpx.get(f"{web.url}/v1/models", headers=headers, timeout=30).status_code == 200
