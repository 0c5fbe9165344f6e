// The canvas page's wiring: load the served models, read the settings form, run one prompt on two models
// at once (same seed, same settings) into two canvases, compare them position by position, and the plain
// chat mode. The API key is asked for only when the server answers 401 and lives in `Api`'s memory.

import { Api } from "./api.js";
import { CanvasView } from "./canvas.js";
import { ChatView } from "./chat.js";

const CHAT = "/v1/chat/completions";
const INTEGER_FIELDS = ["steps", "block_length", "seed", "max_tokens"];
const NUMBER_FIELDS = ["temperature", "threshold"];
const CHOICE_FIELDS = ["remasking", "cache"];
const $ = (selector) => document.querySelector(selector);

const api = new Api(askKey);
const views = [new CanvasView($("#pane-a")), new CanvasView($("#pane-b"))];
const chat = new ChatView($("#chat-log"));
const badges = new Map(); // model id -> "FP" or its quantization
let canvasRun = null; // the AbortController of the canvas run in progress
let chatRun = null; // and of the chat turn in progress
let compared = { both: new Set(), differ: new Set() };

// ---- the API key -----------------------------------------------------------------------------------

function askKey(message) {
  const form = $("#key-form");
  const input = $("#key-input");
  $("#key-message").textContent = `${message}. Enter the server's API key.`;
  form.hidden = false;
  document.body.dataset.ready = "key";
  input.focus();
  return new Promise((resolve, reject) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      input.value = "";
      form.hidden = true;
      resolve(key);
    };
    $("#key-cancel").onclick = () => {
      form.hidden = true;
      reject(new Error("no key given"));
    };
  });
}

// ---- models and settings ---------------------------------------------------------------------------

async function loadModels() {
  for (;;) {
    try {
      const list = await api.json("/v1/models");
      showModels(list.data);
      notice(null);
      $("#run").disabled = $("#chat-send").disabled = false;
      document.body.dataset.ready = "yes";
      return;
    } catch (err) {
      const loading = err.status === 503;
      notice(`Cannot list the models: ${err.describe ? err.describe() : err}` + (loading ? " Retrying..." : ""));
      if (!loading) {
        document.body.dataset.ready = "error";
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

function showModels(cards) {
  const fp = cards.find((card) => !card.quantization) || cards[0];
  const int4 = cards.find((card) => card.quantization === "int4") || cards[cards.length - 1];
  for (const card of cards) badges.set(card.id, card.quantization || "FP");
  for (const [select, chosen] of [["#model-a", fp], ["#model-b", int4], ["#model-chat", fp]]) {
    const element = $(select);
    element.replaceChildren(...cards.map((card) => new Option(`${card.id} (${badges.get(card.id)})`, card.id)));
    if (chosen) element.value = chosen.id;
  }
}

// The diffusion fields of a request: blank inputs are left out, so the server uses the model's default.
function settings() {
  const form = $("#settings").elements;
  const out = {};
  for (const name of INTEGER_FIELDS) if (form[name].value.trim() !== "") out[name] = Number(form[name].value);
  for (const name of NUMBER_FIELDS) if (form[name].value.trim() !== "") out[name] = Number(form[name].value);
  for (const name of CHOICE_FIELDS) if (form[name].value !== "") out[name] = form[name].value;
  return out;
}

function notice(message) {
  const box = $("#notice");
  box.textContent = message || "";
  box.hidden = !message;
}

function describe(err) {
  if (err.name === "AbortError") return "Stopped.";
  return err.describe ? err.describe() : `Network error: ${err.message || err}`;
}

// ---- canvas mode -----------------------------------------------------------------------------------

async function runCanvas(event) {
  event.preventDefault();
  if (!$("#settings").reportValidity()) return;
  const extras = settings();
  const base = { messages: [{ role: "user", content: $("#prompt").value }], ...extras, commit_events: true,
                 stream_options: { include_usage: true } };
  const models = [$("#model-a").value, $("#model-b").value];
  canvasRun = new AbortController();
  const signal = canvasRun.signal;
  busy(true);
  compared = { both: new Set(), differ: new Set() };
  showComparison();
  views.forEach((view, i) => view.reset(models[i], badges.get(models[i]) || "", extras.max_tokens ?? null));
  await Promise.all(views.map((view, i) => drive(view, { ...base, model: models[i] }, signal)));
  canvasRun = null;
  busy(false);
}

async function drive(view, body, signal) {
  try {
    for await (const chunk of api.stream(CHAT, body, signal)) {
      if (chunk.inkwell) for (const index of view.step(chunk.inkwell)) compare(index);
      for (const choice of chunk.choices) {
        if (choice.delta && choice.delta.content) view.text(choice.delta.content);
        if (choice.finish_reason) view.finishReason = choice.finish_reason;
      }
      if (chunk.usage) view.usage = chunk.usage;
    }
    view.finish();
  } catch (err) {
    view.fail(describe(err));
  }
}

function compare(index) {
  const [a, b] = views.map((view) => view.tokenAt(index));
  if (a === null || b === null) return;
  compared.both.add(index);
  if (a !== b) compared.differ.add(index);
  for (const view of views) view.markDiff(index, a !== b);
  showComparison();
}

function showComparison() {
  const { both, differ } = compared;
  $("#compare").textContent = both.size === 0
    ? "Same prompt, same seed, same settings on both sides."
    : `The models committed different tokens at ${differ.size} of the ${both.size} positions both have committed.`;
}

function busy(on) {
  $("#run").disabled = on;
  $("#stop").disabled = !on;
}

// ---- chat mode -------------------------------------------------------------------------------------

async function sendChat(event) {
  event.preventDefault();
  if (!$("#settings").reportValidity()) return;
  const input = $("#chat-input");
  const content = input.value;
  if (!content.trim()) return;
  input.value = "";
  const body = { model: $("#model-chat").value, ...settings(), stream_options: { include_usage: true } };
  chatRun = new AbortController();
  const signal = chatRun.signal;
  $("#chat-send").disabled = true;
  $("#chat-stop").disabled = false;
  await chat.turn(content, (messages) => api.stream(CHAT, { ...body, messages }, signal));
  chatRun = null;
  $("#chat-send").disabled = false;
  $("#chat-stop").disabled = true;
}

function setMode(mode) {
  document.body.dataset.mode = mode;
  $("#canvas-view").hidden = mode !== "canvas";
  $("#chat-view").hidden = mode !== "chat";
  $("#mode-canvas").setAttribute("aria-pressed", String(mode === "canvas"));
  $("#mode-chat").setAttribute("aria-pressed", String(mode === "chat"));
}

$("#prompt-form").addEventListener("submit", runCanvas);
$("#stop").addEventListener("click", () => canvasRun && canvasRun.abort());
$("#chat-form").addEventListener("submit", sendChat);
$("#chat-stop").addEventListener("click", () => chatRun && chatRun.abort());
$("#chat-clear").addEventListener("click", () => chat.clear());
$("#mode-canvas").addEventListener("click", () => setMode("canvas"));
$("#mode-chat").addEventListener("click", () => setMode("chat"));
loadModels();
