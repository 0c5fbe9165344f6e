// Plain chat mode: a conversation with one model over the same chat-completions stream the canvases use,
// without commit events. Each answer grows as its text becomes final; errors end the turn and are shown.

export class ChatView {
  constructor(log) {
    this.log = log;
    this.messages = []; // the conversation sent with every turn: [{role, content}]
  }

  clear() {
    this.messages = [];
    this.log.replaceChildren();
  }

  // Streams one assistant turn: `stream(messages)` yields chat completion chunks.
  async turn(content, stream) {
    this.messages.push({ role: "user", content });
    this.#bubble("user", content);
    const answer = this.#bubble("assistant", "");
    const text = answer.querySelector(".text");
    const meta = answer.querySelector(".meta");
    const started = performance.now();
    let reason = null;
    let usage = null;
    answer.dataset.state = "running";
    try {
      for await (const chunk of stream(this.messages)) {
        for (const choice of chunk.choices) {
          if (choice.delta && choice.delta.content) text.textContent += choice.delta.content;
          if (choice.finish_reason) reason = choice.finish_reason;
        }
        if (chunk.usage) usage = chunk.usage;
      }
      const seconds = (performance.now() - started) / 1000;
      const tokens = usage ? usage.completion_tokens : null;
      meta.textContent = `${tokens ?? "?"} tokens in ${seconds.toFixed(2)} s` +
        (tokens ? `, ${(tokens / seconds).toFixed(1)} tokens/s` : "") + `, finish_reason "${reason || "length"}"`;
      this.messages.push({ role: "assistant", content: text.textContent });
      answer.dataset.state = "done";
    } catch (err) {
      this.messages.pop(); // the failed turn is not part of the conversation
      meta.textContent = err.name === "AbortError" ? "stopped" : err.describe ? err.describe() : String(err);
      meta.classList.add("error-text");
      answer.dataset.state = "error";
    }
  }

  #bubble(role, content) {
    const item = document.createElement("li");
    item.className = `turn ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role;
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = content;
    const meta = document.createElement("div");
    meta.className = "meta";
    item.append(who, text, meta);
    this.log.append(item);
    item.scrollIntoView({ block: "end" });
    return item;
  }
}
