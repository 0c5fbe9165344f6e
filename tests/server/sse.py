"""Reading a server-sent event stream with plain httpx, the way a client without the OpenAI SDK would."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    raw: str  # the whole body as received
    events: list[dict]  # parsed `data:` payloads before [DONE]
    done: bool  # ended with `data: [DONE]`

    @property
    def text_by_choice(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for e in self.events:
            for c in e.get("choices", []):
                piece = c.get("delta", {}).get("content") if "delta" in c else c.get("text")
                out[c["index"]] = out.get(c["index"], "") + (piece or "")
        return out

    @property
    def finish_reasons(self) -> dict[int, str]:
        return {c["index"]: c["finish_reason"] for e in self.events for c in e.get("choices", [])
                if c.get("finish_reason")}


def parse(raw: str) -> tuple[list[dict], bool]:
    events, done = [], False
    for block in raw.split("\n\n"):
        data = [line[len("data: "):] for line in block.split("\n") if line.startswith("data: ")]
        if not data:
            continue
        payload = "\n".join(data)
        if payload == "[DONE]":
            done = True
            continue
        assert not done, "data after [DONE]"
        events.append(json.loads(payload))
    return events, done


def post_stream(url: str, path: str, body: dict, headers: dict | None = None, timeout: float = 60) -> Stream:
    with httpx.stream("POST", url + path, json=body | {"stream": True}, headers=headers or {},
                      timeout=timeout) as r:
        raw = r.read().decode()
    events, done = parse(raw) if r.status_code == 200 else ([], False)
    return Stream(r.status_code, r.headers, raw, events, done)
