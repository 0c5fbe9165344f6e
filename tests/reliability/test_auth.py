"""Auth: with a key configured, every route but `/`, its static files and `/health` answers 401 without
`Authorization: Bearer KEY` (the schema and docs pages and /metrics included), the comparison goes through
`hmac.compare_digest`, and the key never reaches the log, even at debug level."""

from __future__ import annotations

import hmac

import httpx
import pytest
from starlette.routing import Mount

from .conftest import API_KEY

PUBLIC = {"/", "/health", "/static"}
WRONG = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
         {"Authorization": f"Basic {API_KEY}"}, {"Authorization": f"Bearer {API_KEY[:-1]}"},
         {"Authorization": f"Bearer {API_KEY}x"}, {"Authorization": "Bearer"},
         {"Authorization": f"Bearer {API_KEY} {API_KEY}"}]


def routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the app (in included routers too), mounts as their prefix."""
    out, todo = [], list(app.routes)
    while todo:
        route = todo.pop()
        if hasattr(route, "original_router"):  # FastAPI's wrapper of an included router
            todo += route.original_router.routes
        elif isinstance(route, Mount):
            out.append(("GET", route.path))
        else:
            out += [(method, route.path) for method in sorted(route.methods)]
    return sorted(out)


def test_every_route_but_the_public_ones_needs_the_key(in_process):
    server = in_process(api_key=API_KEY)
    checked = routes(server.app)
    assert {"/openapi.json", "/docs", "/redoc", "/metrics", "/v1/models", "/v1/chat/completions"} <= {
        path for _, path in checked}
    for method, path in checked:
        url = server.url + (path + "/canvas.js" if path == "/static" else path)
        for headers in WRONG:
            r = httpx.request(method, url, headers=headers, json={}, timeout=30)
            if path in PUBLIC:
                assert r.status_code in (200, 405), (method, path, r.status_code)
            else:
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.json()["error"]["type"] == "authentication_error"
        good = httpx.request(method, url, headers={"Authorization": f"Bearer {API_KEY}"}, json={}, timeout=30)
        assert good.status_code != 401, (method, path)
    assert httpx.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}).json()[
        "paths"]["/v1/chat/completions"]


def test_the_key_is_compared_in_constant_time(in_process, monkeypatch):
    """Every check, whatever the length or scheme of what was sent, is one `hmac.compare_digest` call."""
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    server = in_process(api_key=API_KEY)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    sent = ("x", API_KEY[:-1], API_KEY + "0" * 100, API_KEY)
    for given in sent:
        r = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {given}"}, timeout=30)
        assert r.status_code == (200 if given == API_KEY else 401)
    assert calls == [(g.encode(), API_KEY.encode()) for g in sent]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/metrics"])
def test_the_key_never_reaches_the_log(keyed_server, path):
    """The shared server logs at debug level; send the key right, wrong, and in near misses, then read it."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    for headers in [{"Authorization": f"Bearer {API_KEY}"}, *WRONG]:
        httpx.request("POST" if path.startswith("/v1") else "GET", keyed_server.url + path, headers=headers,
                      json=body, timeout=60)
    log = keyed_server.log.read_text()
    assert "DEBUG" in log and "/v1/chat/completions" in log  # the log is at debug level and has requests
    assert API_KEY not in log and API_KEY[:-1] not in log
