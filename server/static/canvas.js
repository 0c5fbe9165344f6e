// One side of the comparison: a model's answer canvas filling in from `commit_events` chunks.
// Each position of the canvas is a cell: masked until a step commits it, marked `fresh` for the step that
// committed it, `diff` where the other side committed a different token id there, `filled` when the
// sampler stopped early and filled the rest with end-of-sequence, `outside` past max_tokens (the canvas is rounded up to whole blocks). Hovering a committed cell shows its confidence
// (probability of the committed token) and margin (top-1 minus top-2 probability). The answer below
// the canvas is the stream's `delta.content`: only the newly final contiguous text, as the API sends it.

const MASK_GLYPH = "\u00a0"; // masked cells are drawn by CSS; a no-break space keeps their height

export class CanvasView {
  constructor(root) {
    this.root = root;
    this.grid = root.querySelector(".canvas");
    this.inspect = root.querySelector(".inspect");
    this.answer = root.querySelector(".answer");
    this.errorBox = root.querySelector(".error");
    this.stat = (name) => root.querySelector(`.stat-${name}`);
    this.grid.addEventListener("mouseover", (e) => this.#hover(e.target));
    this.reset("", "", null);
  }

  reset(model, badge, maxTokens) {
    this.root.querySelector(".model-name").textContent = model || "–";
    this.root.querySelector(".badge").textContent = badge;
    this.maxTokens = maxTokens;
    this.cells = [];
    this.commits = []; // per position: {token_id, text, confidence, margin, step, block}
    this.fresh = [];
    this.passes = 0;
    this.committed = 0;
    this.started = performance.now();
    this.elapsed = 0;
    this.usage = null;
    this.finishReason = null;
    this.grid.replaceChildren();
    this.answer.textContent = "";
    this.root.querySelector(".finish").textContent = "";
    this.inspect.textContent = "Hover a token for its confidence and margin.";
    this.errorBox.hidden = true;
    this.errorBox.textContent = "";
    this.#setState(model ? "running" : "idle");
    this.#stats({ step: null, block: null, masked_remaining: null });
  }

  tokenAt(index) {
    const c = this.commits[index];
    return c === undefined ? null : c.token_id;
  }

  // One denoising step: `event` is a chunk's `inkwell` field. Returns the indices it committed.
  step(event) {
    for (const cell of this.fresh) cell.classList.remove("fresh");
    this.fresh = [];
    this.committed += event.commits.length;
    this.#grow(this.committed + event.masked_remaining);
    for (const c of event.commits) {
      this.#grow(c.index + 1);
      const cell = this.cells[c.index];
      this.commits[c.index] = { ...c, step: event.step, block: event.block };
      cell.textContent = shown(c.text, c.token_id);
      cell.classList.remove("masked");
      cell.classList.add("fresh");
      cell.classList.toggle("special", c.text === "");
      cell.title = describe(c.index, this.commits[c.index]);
      this.fresh.push(cell);
    }
    if (event.masked_remaining === 0) this.#fillRest();
    this.passes += 1;
    this.#stats(event);
    return event.commits.map((c) => c.index);
  }

  text(piece) {
    this.answer.textContent += piece;
  }

  markDiff(index, differs) {
    if (this.cells[index]) this.cells[index].classList.toggle("diff", differs);
  }

  finish() {
    for (const cell of this.fresh) cell.classList.remove("fresh");
    this.fresh = [];
    const tokens = this.usage ? `${this.usage.completion_tokens} answer tokens, ` : "";
    const reason = this.finishReason || "length";
    const why = reason === "stop" ? "stopped at a stop token or string" : "reached max tokens";
    this.root.querySelector(".finish").textContent =
      `Done: ${tokens}finish_reason "${reason}" (${why}) after ${this.passes} forward passes in ` +
      `${(this.elapsed / 1000).toFixed(2)} s.`;
    this.#setState("done");
  }

  fail(message) {
    this.errorBox.textContent = message;
    this.errorBox.hidden = false;
    this.#setState("error");
  }

  #setState(state) {
    this.root.dataset.state = state;
    this.root.querySelector(".state").textContent = state === "idle" ? "" : state;
  }

  #grow(size) {
    while (this.cells.length < size) {
      const cell = document.createElement("span");
      cell.className = "cell masked";
      cell.setAttribute("role", "listitem");
      cell.dataset.index = String(this.cells.length);
      cell.textContent = MASK_GLYPH;
      cell.title = `position ${this.cells.length}: masked`;
      if (this.maxTokens !== null && this.cells.length >= this.maxTokens) cell.classList.add("outside");
      this.grid.append(cell);
      this.cells.push(cell);
    }
  }

  // At an early stop (every position before the first stop token committed) the sampler fills the rest of
  // the canvas with the end-of-sequence token without committing it: no step decided those positions.
  #fillRest() {
    this.cells.forEach((cell, index) => {
      if (!cell.classList.contains("masked")) return;
      cell.classList.replace("masked", "filled");
      cell.textContent = "eos";
      cell.title = `position ${index}: filled with end-of-sequence after the stop token, not committed by a step`;
    });
  }

  #stats(event) {
    this.elapsed = performance.now() - this.started;
    const seconds = this.elapsed / 1000;
    this.stat("step").textContent = event.step === null ? "0" : String(event.step + 1);
    this.stat("block").textContent = event.block === null ? "–" : String(event.block);
    this.stat("passes").textContent = String(this.passes);
    this.stat("committed").textContent = String(this.committed);
    this.stat("masked").textContent = event.masked_remaining === null ? "–" : String(event.masked_remaining);
    this.stat("rate").textContent = this.committed && seconds > 0 ? (this.committed / seconds).toFixed(1) : "–";
  }

  #hover(target) {
    const index = target.dataset ? target.dataset.index : undefined;
    if (index === undefined) return;
    const c = this.commits[Number(index)];
    this.inspect.textContent = c ? describe(Number(index), c) : `position ${index}: masked`;
  }
}

function shown(text, tokenId) {
  if (text === "") return `#${tokenId}`; // special tokens decode to nothing
  return text.replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5").replace(/ /g, "\u00b7");
}

function describe(index, c) {
  return `position ${index}: token ${c.token_id} ${JSON.stringify(c.text)}, confidence ` +
    `${c.confidence.toFixed(3)}, margin ${c.margin.toFixed(3)}, committed at step ${c.step + 1} (block ${c.block})`;
}
