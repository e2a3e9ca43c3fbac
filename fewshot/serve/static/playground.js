// The Playground: a page over the server's public API only (/v1/models, /v1/completions),
// as any client would use it. No framework and no CDN: the server runs offline.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "fewshot-api-key";
const state = { key: sessionStorage.getItem(KEY), controller: null };

// ------------------------------------------------------------------ the API, with its key

async function call(path, init = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  let response = await fetch(path, { ...init, headers });
  if (response.status === 401) {
    await askForKey(state.key ? "That key was refused; try another." : "");
    return call(path, init);
  }
  return response;
}

function askForKey(error) {
  const dialog = $("key-dialog");
  $("key-error").textContent = error;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      state.key = $("key").value.trim() || null;
      if (state.key) sessionStorage.setItem(KEY, state.key);
      resolve();
    }, { once: true });
    dialog.showModal();
  });
}

async function errorText(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function loadModels() {
  const response = await call("v1/models");
  if (!response.ok) return status(await errorText(response), true);
  const select = $("model");
  select.replaceChildren();
  for (const card of (await response.json()).data) {
    const option = new Option(card.parent ? `${card.id} (adapter of ${card.parent})` : card.id, card.id);
    option.dataset.context = card.max_model_len;
    select.add(option);
  }
  status(`${select.options.length} model(s); context ${select.options[0]?.dataset.context} tokens`);
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

// ------------------------------------------------------------------ the few-shot helper

function addExample(input = "", output = "") {
  const row = $("examples").tBodies[0].insertRow();
  for (const [name, value] of [["input", input], ["output", output]]) {
    const field = Object.assign(document.createElement("input"), { type: "text", value, spellcheck: false });
    field.className = name;
    row.insertCell().append(field);
  }
  const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "x", title: "remove" });
  remove.addEventListener("click", () => row.remove());
  row.insertCell().append(remove);
}

// The harness's layout (fewshot.eval.harness): each example through the template, a blank line
// between them, then the query's template cut before {target}, with no trailing space.
function buildPrompt() {
  const template = $("template").value;
  if (!template.includes("{input}") || !template.includes("{target}")) {
    return status("The template needs {input} and {target}", true);
  }
  const fill = (input, target) => template.replaceAll("{input}", input).replaceAll("{target}", target);
  const shots = [...$("examples").tBodies[0].rows]
    .map((row) => [row.querySelector(".input").value, row.querySelector(".output").value])
    .filter(([input]) => input.trim() !== "")
    .map(([input, output]) => fill(input, output));
  const query = template.slice(0, template.indexOf("{target}")).replaceAll("{input}", $("query").value).trimEnd();
  $("prompt").value = [...shots, query].join("\n\n");
}

// ------------------------------------------------------------------ a completion, streamed

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function stops() {
  // Comma-separated; \n and \t written as escapes, since the field is one line.
  return $("stop_sequences").value.split(",").map((s) => s.trim().replaceAll("\\n", "\n").replaceAll("\\t", "\t"))
    .filter((s) => s !== "").slice(0, 4);
}

function requestBody() {
  const body = {
    model: $("model").value || undefined, prompt: $("prompt").value, stream: true,
    stream_options: { include_usage: true }, max_tokens: number("max_tokens"), temperature: number("temperature"),
    top_p: number("top_p"), n: number("n"), presence_penalty: number("presence_penalty"),
    frequency_penalty: number("frequency_penalty"),
  };
  if (number("top_k")) body.top_k = number("top_k");
  if (number("seed") !== null) body.seed = number("seed");
  if (stops().length) body.stop = stops();
  if ($("probs").checked) body.logprobs = 5;  // the chosen token and the 5 most likely, per position
  return body;
}

async function submit() {
  const body = requestBody();
  const outputs = $("outputs");
  outputs.replaceChildren();
  for (let i = 0; i < body.n; i++) outputs.append(Object.assign(document.createElement("div"), { className: "output" }));
  $("usage").textContent = "";
  state.controller = new AbortController();
  busy(true);
  try {
    const response = await call("v1/completions", { method: "POST", body: JSON.stringify(body), signal: state.controller.signal });
    if (!response.ok) return status(await errorText(response), true);
    status("streaming");
    await readEvents(response, (chunk) => show(chunk));
    status("done");
  } catch (error) {
    status(error.name === "AbortError" ? "stopped" : String(error), error.name !== "AbortError");
  } finally {
    busy(false);
  }
}

async function readEvents(response, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ") && line !== "data: [DONE]") onChunk(JSON.parse(line.slice(6)));
      }
    }
  }
}

function show(chunk) {
  if (chunk.error) return status(chunk.error.message, true);
  if (chunk.usage) {
    const u = chunk.usage;
    $("usage").textContent = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens`;
  }
  for (const choice of chunk.choices || []) {
    const out = $("outputs").children[choice.index];
    if (!out || !choice.text) continue;
    const lp = choice.logprobs;
    // Token strings can split a character (a byte-level token); then the text is shown whole.
    if (lp && lp.tokens.join("") === choice.text) {
      lp.tokens.forEach((token, i) => out.append(tokenSpan(token, lp.token_logprobs[i], lp.top_logprobs[i])));
    } else {
      out.append(document.createTextNode(choice.text));
    }
  }
}

// Tinted by probability, red (unlikely) to green (likely), as GPT-3's Playground showed it.
function tokenSpan(token, logprob, top) {
  const span = Object.assign(document.createElement("span"), { className: "token", textContent: token });
  const p = Math.exp(logprob);
  span.style.background = `hsla(${Math.round(120 * p)}, 75%, 50%, 0.35)`;
  span.dataset.token = token;
  span.dataset.logprob = logprob;
  span.dataset.top = JSON.stringify(top || {});
  return span;
}

function busy(running) {
  $("submit").disabled = running;
  $("stop").disabled = !running;
}

// ------------------------------------------------------------------ the hover box

function showTooltip(span) {
  const tip = $("tooltip");
  const chosen = span.dataset.token;
  const rows = Object.entries(JSON.parse(span.dataset.top)).sort((a, b) => b[1] - a[1]);
  const table = document.createElement("table");
  for (const [token, logprob] of rows) {
    const row = table.insertRow();
    row.className = token === chosen ? "chosen" : "";
    row.insertCell().textContent = JSON.stringify(token);
    row.insertCell().textContent = Number(logprob).toFixed(3);
    row.insertCell().textContent = `${(100 * Math.exp(logprob)).toFixed(1)}%`;
  }
  tip.replaceChildren(table);
  tip.hidden = false;
  const box = span.getBoundingClientRect();
  const below = box.bottom + 6 + tip.offsetHeight <= window.innerHeight;  // else above the token
  tip.style.left = `${Math.min(box.left, window.innerWidth - tip.offsetWidth - 8)}px`;
  tip.style.top = `${below ? box.bottom + 6 : box.top - 6 - tip.offsetHeight}px`;
}

// ------------------------------------------------------------------ wiring

$("add-example").addEventListener("click", () => addExample());
$("build").addEventListener("click", buildPrompt);
$("submit").addEventListener("click", submit);
$("stop").addEventListener("click", () => state.controller?.abort());
$("outputs").addEventListener("mouseover", (e) => e.target.classList.contains("token") && showTooltip(e.target));
$("outputs").addEventListener("mouseout", (e) => e.target.classList.contains("token") && ($("tooltip").hidden = true));
addExample();
addExample();
loadModels();
