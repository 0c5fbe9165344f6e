// The page's client of Inkwell's OpenAI-compatible API: the API key (kept in memory only, asked for once
// when the server answers 401), JSON calls, and Server-Sent Event streams of chat completion chunks.
// Errors are `ApiError`s carrying OpenAI's {message, type, param, code}, whether they came as an HTTP
// status before the stream or as a `data: {"error": ...}` chunk after it began.

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `request failed (HTTP ${status})`);
    this.status = status; // 0 for an error chunk inside a stream
    this.type = error.type || null;
    this.code = error.code || null;
    this.param = error.param || null;
  }

  describe() {
    const where = this.status ? `HTTP ${this.status}` : "error during the stream";
    return `${where}${this.type ? ` (${this.type})` : ""}: ${this.message}`;
  }
}

async function errorOf(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    // not JSON: fall back to the status line
  }
  const error = body && typeof body.error === "object" && body.error ? body.error : {};
  return new ApiError(res.status, { message: res.statusText || "request failed", ...error });
}

export class Api {
  #key = null; // memory only: never written to web storage, cookies or the URL
  #asking = null; // the pending key prompt, shared by concurrent 401s

  // askKey(message) -> Promise<string>: shows a prompt; rejects when the person cancels.
  constructor(askKey) {
    this.askKey = askKey;
  }

  async request(path, init = {}) {
    for (;;) {
      const used = this.#key;
      const headers = { ...(init.headers || {}) };
      if (used !== null) headers.Authorization = `Bearer ${used}`;
      const res = await fetch(path, { ...init, headers });
      if (res.status !== 401) return res;
      const err = await errorOf(res);
      if (this.#key === used) await this.#newKey(used === null ? err.message : `${err.message} (the key was refused)`);
    }
  }

  async #newKey(message) {
    if (this.#asking === null) {
      this.#asking = this.askKey(message)
        .then((key) => { this.#key = key; })
        .catch(() => { throw new ApiError(401, { message: "an API key is required", type: "authentication_error" }); })
        .finally(() => { this.#asking = null; });
    }
    await this.#asking;
  }

  async json(path) {
    const res = await this.request(path);
    if (!res.ok) throw await errorOf(res);
    return res.json();
  }

  // Yields the parsed chunks of a streamed POST until `data: [DONE]`.
  async *stream(path, body, signal) {
    const res = await this.request(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, stream: true }),
      signal,
    });
    if (!res.ok) throw await errorOf(res);
    yield* sseChunks(res.body);
  }
}

// Inkwell separates SSE lines with "\n" and events with a blank line; comment lines (pings) are skipped.
export async function* sseChunks(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new ApiError(0, { message: "the stream ended before data: [DONE]" });
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const data = eventData(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (data === null) continue;
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(0, chunk.error);
        yield chunk;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function eventData(event) {
  const lines = event.split("\n").filter((line) => line.startsWith("data:"));
  if (lines.length === 0) return null;
  return lines.map((line) => line.slice(line.startsWith("data: ") ? 6 : 5)).join("\n");
}
