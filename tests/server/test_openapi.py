"""/openapi.json documents the statuses the server really answers, each error as OpenAI's
`{"error": {message, type, param, code}}`, and not FastAPI's default 422, which the server never sends
(validation errors are 400s). No model is loaded: the schema and a validation error need none."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from inkwell.server.app import create_app
from inkwell.server.settings import ServerSettings

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
KEY = "openapi-test-key"


def schema_of(api_key: str | None) -> tuple[TestClient, dict]:
    client = TestClient(create_app(ServerSettings(models=(("tiny", "unused"),), api_key=api_key), None))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = client.get("/openapi.json", headers=headers)
    assert response.status_code == 200
    return client, response.json()


def operations(schema: dict) -> dict[str, dict]:
    return {f"{method.upper()} {path}": op
            for path, ops in schema["paths"].items() for method, op in ops.items()}


@pytest.mark.parametrize("api_key", [None, KEY])
def test_no_422_anywhere(api_key):
    _, schema = schema_of(api_key)
    assert all("422" not in op["responses"] for op in operations(schema).values())
    assert "422" not in json.dumps(schema)
    assert not {"HTTPValidationError", "ValidationError"} & set(schema["components"]["schemas"])


def test_errors_are_documented_as_openai_error_responses():
    _, schema = schema_of(KEY)
    ops = operations(schema)
    for name in ("POST /v1/chat/completions", "POST /v1/completions"):
        responses = ops[name]["responses"]
        assert set(responses) == {"200", "400", "401", "404", "413", "429", "500", "503", "504"}, name
        for status in set(responses) - {"200"}:
            assert responses[status]["content"]["application/json"]["schema"] == ERROR_REF, (name, status)
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(ops["GET /v1/models"]["responses"]) == {"200", "401", "503"}
    assert set(ops["GET /metrics"]["responses"]) == {"200", "401"}
    assert set(ops["GET /health"]["responses"]) == {"200", "503"}  # /health needs no key
    info = schema["components"]["schemas"]["ErrorInfo"]
    assert set(info["required"]) == {"message", "type", "param", "code"}
    assert schema["components"]["schemas"]["ErrorResponse"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorInfo"}


def test_401_is_documented_only_when_a_key_is_configured():
    _, schema = schema_of(None)
    assert all("401" not in op["responses"] for op in operations(schema).values())


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": "2"}),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "temperature": -1}),
    ("/v1/completions", b"{not json"),
])
def test_a_real_400_matches_the_documented_schema(path, body):
    client, schema = schema_of(KEY)
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = client.post(path, headers={"Authorization": f"Bearer {KEY}"}, **kw)
    assert response.status_code == 400
    documented = schema["paths"][path]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert documented == ERROR_REF
    unauthorized = client.post(path, json={})
    assert unauthorized.status_code == 401
    for body in (response.json(), unauthorized.json()):
        assert conforms(body, ERROR_REF, schema["components"]["schemas"]), body


def conforms(value, node: dict, components: dict) -> bool:
    """`value` against the part of JSON Schema these error schemas use: $ref, type, properties, required,
    anyOf."""
    if "$ref" in node:
        return conforms(value, components[node["$ref"].rsplit("/", 1)[1]], components)
    if "anyOf" in node:
        return any(conforms(value, branch, components) for branch in node["anyOf"])
    types = {"object": dict, "string": str, "integer": int, "null": type(None)}
    if not isinstance(value, types[node["type"]]):
        return False
    if node["type"] != "object":
        return True
    props = node.get("properties", {})
    return (set(node.get("required", [])) <= set(value) and set(value) <= set(props)
            and all(conforms(value[k], props[k], components) for k in value))
