"""The canvas page at `/` (DESIGN section 8): served without a key, self-contained, and working in a browser.

The fast tests read the page through the app in-process. The browser tests start headless Chromium
(Debian's `chromium`, which `.ci/run` installs) against the real test server, which wants an API key: the
page must ask for it, run one prompt on the FP and the int4 model at once, and end with the same text
the API gives for the same request and seed, with the positions where the models differ marked.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from inkwell.server import app as app_module
from inkwell.server.app import create_app
from inkwell.server.settings import ServerSettings
from PIL import Image

from .browser import Browser, find_chromium
from .conftest import API_KEY
from .sse import post_stream

STATIC = Path(app_module.__file__).parent / "static"
CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium, as .ci/run does), "
    "so the browser test of the canvas page cannot run")
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPT = "To be, or not to be"
# sampled (random weights decode greedily to one repeated token), seeded, small enough for a 2-core CPU
SETTINGS = {"steps": 16, "block_length": 16, "remasking": "low_confidence", "temperature": 1.0,
            "cache": "none", "seed": 11, "max_tokens": 32}
MESSAGES = [{"role": "user", "content": PROMPT}]
DIFF_COLOUR = (0xFF, 0xD0, 0xD0)  # --diff in canvas.css


# ---- served without a key, nothing from other hosts ----------------------------------------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    """The app with an API key and no engine: the page's routes must not need either."""
    return TestClient(create_app(ServerSettings(api_key="secret"), engine_factory=None))


def local_references(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_page_and_static_files_are_served_without_the_key(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = [r for r in local_references(page.text) if not r.startswith("data:")]
    assert "/static/app.js" in refs and "/static/canvas.css" in refs
    imports = {f"/static/{name}" for f in STATIC.glob("*.js") for name in re.findall(r'from "\./([\w.]+)"',
                                                                                      f.read_text())}
    assert imports == {"/static/api.js", "/static/canvas.js", "/static/chat.js"}
    types = {".js": "javascript", ".css": "text/css"}
    for ref in [*refs, *imports]:
        r = client.get(ref)
        assert r.status_code == 200, ref
        assert types[Path(ref).suffix] in r.headers["content-type"], (ref, r.headers["content-type"])
    assert client.get("/v1/models").status_code == 401  # the key is configured: only the page is public
    assert client.get("/static/missing.js").status_code == 404


def test_page_references_no_other_host_and_keeps_no_key_on_disk():
    files = sorted(STATIC.iterdir())
    assert {f.name for f in files} == {"index.html", "canvas.css", "api.js", "app.js", "canvas.js", "chat.js"}
    for f in files:
        text = f.read_text()
        host = re.search(r"https?://|(?:src|href|url)\s*[=(]\s*[\"']?//|@import", text, re.I)
        assert host is None, f"{f.name} refers to another host: {host}"
        storage = re.search(r"localStorage|sessionStorage|indexedDB|document\.cookie", text)
        assert storage is None, f"{f.name} uses {storage.group()}: the key must stay in memory"


# ---- in a browser --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    b = Browser(CHROMIUM)
    yield b
    b.close()


def open_page(browser: Browser, url: str, keys: tuple[str, ...] = (API_KEY,)) -> list[str]:
    """Load the page; the server wants a key, so the page asks for one: give `keys` in turn. The prompts'
    messages."""
    browser.goto(url + "/")
    messages = []
    for key in keys:
        browser.wait_for("!document.querySelector('#key-form').hidden", timeout=20)
        messages.append(browser.eval("document.querySelector('#key-message').textContent"))
        browser.eval(f"document.querySelector('#key-input').value = {key!r}; "
                     "document.querySelector('#key-form').requestSubmit()")
    browser.wait_for("document.body.dataset.ready === 'yes'", timeout=20)
    return messages


def fill(browser: Browser, settings: dict) -> None:
    for name, value in settings.items():
        browser.eval(f"document.querySelector('#settings').elements[{name!r}].value = {str(value)!r}")


PANES = """['#pane-a', '#pane-b'].map((id) => {
  const pane = document.querySelector(id);
  const text = (selector) => pane.querySelector(selector).textContent;
  const cells = [...pane.querySelectorAll('.cell')];
  const marked = (name) => cells.filter((c) => c.classList.contains(name)).map((c) => +c.dataset.index);
  return {state: pane.dataset.state, model: text('.model-name'), answer: text('.answer'),
          error: text('.error'), steps: +text('.stat-step'), passes: +text('.stat-passes'),
          cells: cells.length, masked: marked('masked'), filled: marked('filled'), diff: marked('diff')};
})"""
FINISHED = "[...document.querySelectorAll('.pane')].every((p) => ['done', 'error'].includes(p.dataset.state))"


def api_canvas(url: str, model: str) -> tuple[str, dict[int, int], int, int]:
    """The API's answer for the page's request: (text, token id per committed position, steps, positions
    left masked at the end; 0 when the sampler stopped early and filled them with eos)."""
    body = {"model": model, "messages": MESSAGES, "commit_events": True} | SETTINGS
    stream = post_stream(url, "/v1/chat/completions", body, headers=AUTH)
    assert stream.status == 200 and stream.done, stream.raw[:500]
    steps = [e["inkwell"] for e in stream.events if e.get("inkwell")]
    committed = {c["index"]: c["token_id"] for s in steps for c in s["commits"]}
    return stream.text_by_choice[0], committed, len(steps), steps[-1]["masked_remaining"]


@needs_chromium
@pytest.mark.slow
def test_canvases_fill_in_side_by_side_and_end_with_the_api_answer(browser, server, tmp_path):
    assert "API key" in open_page(browser, server.url)[0]
    chosen = browser.eval("['#model-a', '#model-b'].map((id) => document.querySelector(id).value)")
    assert chosen == ["tiny", "tiny-int4"]  # the first FP model and the first int4 model
    fill(browser, SETTINGS)
    browser.eval(f"document.querySelector('#prompt').value = {PROMPT!r}; "
                 "document.querySelector('#prompt-form').requestSubmit()")
    browser.wait_for(FINISHED, timeout=45)
    panes = browser.eval(PANES)

    expected = {model: api_canvas(server.url, model) for model in ("tiny", "tiny-int4")}
    for pane in panes:
        assert pane["state"] == "done", pane["error"]
        text, committed, steps, masked = expected[pane["model"]]
        assert pane["answer"] == text and text
        assert pane["steps"] == pane["passes"] == steps > 0
        uncommitted = [i for i in range(32) if i not in committed]
        assert pane["cells"] == 32 and pane["masked" if masked else "filled"] == uncommitted
    (fp, int4) = (expected["tiny"][1], expected["tiny-int4"][1])
    differ = sorted(i for i in fp.keys() & int4.keys() if fp[i] != int4[i])
    assert differ, "RTN int4 of random weights should change some commits; the test would show nothing"
    assert panes[0]["diff"] == panes[1]["diff"] == differ
    assert browser.eval("document.querySelector('#key-form').hidden")  # asked once, not per request
    assert browser.eval("localStorage.length + sessionStorage.length + document.cookie.length") == 0
    browser.eval("document.querySelector('#pane-b .cell').dispatchEvent(new MouseEvent('mouseover', "
                 "{bubbles: true}))")
    inspect = browser.eval("document.querySelector('#pane-b .inspect').textContent")
    pattern = rf"position 0: token {int4[0]} .*, confidence [01]\.\d{{3}}, margin [01]\.\d{{3}}, .*"
    assert re.fullmatch(pattern, inspect), inspect

    shot = browser.screenshot(tmp_path / "canvas.png")
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    background = max(colours)[0]
    assert len(colours) > 50 and background < 0.9 * image.width * image.height, "the screenshot is blank"
    assert any(c == DIFF_COLOUR for _, c in colours), "differing positions are not drawn in the diff colour"
    assert browser.page_errors == []


@needs_chromium
@pytest.mark.slow
def test_errors_and_chat_mode(browser, server):
    messages = open_page(browser, server.url, keys=("wrong-key", API_KEY))  # a reload forgets the key
    assert "refused" not in messages[0] and "refused" in messages[1]
    fill(browser, {"steps": 5, "block_length": 16, "max_tokens": 32})  # 5 steps cannot cover 2 blocks
    browser.eval("document.querySelector('#prompt-form').requestSubmit()")
    browser.wait_for(FINISHED, timeout=20)
    for pane in browser.eval(PANES):
        assert pane["state"] == "error" and pane["error"].startswith("HTTP 400 (invalid_request_error): ")

    fill(browser, SETTINGS | {"max_tokens": 16})
    browser.eval(f"document.querySelector('#mode-chat').click(); "
                 f"document.querySelector('#chat-input').value = {PROMPT!r}; "
                 "document.querySelector('#chat-form').requestSubmit()")
    turn = "document.querySelector('#chat-log .turn.assistant')"
    browser.wait_for(f"{turn} && {turn}.dataset.state !== 'running'", timeout=30)
    assert browser.eval(f"{turn}.dataset.state") == "done", browser.eval(f"{turn}.textContent")
    body = {"model": "tiny", "messages": MESSAGES} | SETTINGS | {"max_tokens": 16}
    answer = httpx.post(server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60).json()
    shown = browser.eval(f"{turn}.querySelector('.text').textContent")
    assert shown == answer["choices"][0]["message"]["content"]
    assert browser.page_errors == []


STREAM = """(async () => {
  const {sseChunks} = await import('/static/api.js');
  const read = async (parts) => {
    const bytes = new TextEncoder();
    const start = (c) => { parts.forEach((p) => c.enqueue(bytes.encode(p))); c.close(); };
    const body = new ReadableStream({start});
    const seen = [];
    try {
      for await (const chunk of sseChunks(body)) seen.push(chunk);
      return {seen, error: null};
    } catch (err) {
      return {seen, error: err.describe()};
    }
  };
  return [
    await read([': ping\\n\\n', 'data: {"a": ', '1}\\n', '\\ndata: {"b": 2}\\n\\ndata: [DONE]\\n\\n']),
    await read(['data: {"a": 1}\\n\\ndata: {"error": {"message": "too slow", "type": "timeout_error"}}\\n\\n',
                'data: [DONE]\\n\\n']),
    await read(['data: {"a": 1}\\n\\n']),
  ];
})()"""

VIEW = """(async () => {
  const {CanvasView} = await import('/static/canvas.js');
  const root = document.querySelector('#pane-a').cloneNode(true);
  const view = new CanvasView(root);
  const commit = (index, id) => ({index, token_id: id, text: 't' + id, confidence: 0.5, margin: 0.25});
  const marks = () => [...root.querySelectorAll('.cell')].map((cell) => [...cell.classList].sort().join(' '));
  view.reset('m', 'FP', 3);
  view.step({step: 0, block: 0, commits: [commit(1, 7)], masked_remaining: 3});
  const first = marks();
  view.step({step: 1, block: 0, commits: [commit(0, 5)], masked_remaining: 0});
  const second = marks();
  root.querySelectorAll('.cell')[1].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
  const text = (selector) => root.querySelector(selector).textContent;
  return {first, second, inspect: text('.inspect'), steps: text('.stat-step'), passes: text('.stat-passes')};
})()"""


@needs_chromium
def test_stream_reader_and_canvas_marks_in_the_page(browser, server):
    """The page's own modules on hand-made input: SSE chunks split anywhere, an error chunk after the stream
    began, a stream cut before [DONE]; a canvas's masked, fresh, earlier, filled and outside positions."""
    browser.goto(server.url + "/")
    ok, error_chunk, cut = browser.eval(STREAM)
    assert ok == {"seen": [{"a": 1}, {"b": 2}], "error": None}
    assert error_chunk == {"seen": [{"a": 1}], "error": "error during the stream (timeout_error): too slow"}
    assert cut == {"seen": [{"a": 1}],
                   "error": "error during the stream: the stream ended before data: [DONE]"}
    view = browser.eval(VIEW)
    assert view["first"] == ["cell masked", "cell fresh", "cell masked", "cell masked outside"]
    assert view["second"] == ["cell fresh", "cell", "cell filled", "cell filled outside"]
    assert view["inspect"] == ('position 1: token 7 "t7", confidence 0.500, margin 0.250, '
                               "committed at step 1 (block 0)")
    assert (view["steps"], view["passes"]) == ("2", "2")
    assert browser.page_errors == []
