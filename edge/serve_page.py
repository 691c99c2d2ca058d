"""The live page `noodle-edge serve` answers at /: plain HTML, its style and script inline.

No build step, no CDN, no font or script from elsewhere: the Pi may be offline. The page is
the same bytes for every model; it asks /v1/model for the labels and /events (server-sent
events, which Chromium and Firefox both keep open and reopen) for each result, and it only
ever puts text from the server into the page through textContent, so a label such as
<script> stays text. The Content-Security-Policy allows this script and style alone, by
their sha256, and nothing from any other origin.

Standard library only: this file ships to the device.
"""
from __future__ import annotations

import base64
import hashlib

STYLE = """
body { font: 16px system-ui, sans-serif; margin: 0; background: #111; color: #eee; }
main { max-width: 60rem; margin: auto; padding: 1rem; display: flex; flex-wrap: wrap; gap: 1rem; }
#view { flex: 2 1 24rem; background: #000; min-height: 12rem; }
#view img { width: 100%; display: block; }
#side { flex: 1 1 14rem; }
#label { font-size: 2.4rem; font-weight: 600; overflow-wrap: anywhere; margin: .2rem 0; }
#label.unknown { color: #aaa; font-style: italic; }
#top { list-style: none; padding: 0; }
#top li { margin: .4rem 0; }
.name { overflow-wrap: anywhere; }
.bar { background: #333; height: .6rem; border-radius: .3rem; }
.fill { background: #4caf50; height: 100%; border-radius: .3rem; width: 0; }
.small { color: #aaa; font-size: .85rem; }
#teach { flex: 1 1 100%; border-top: 1px solid #333; padding-top: .5rem; }
#teach input, #teach button { font: inherit; margin: .2rem; }
#record { user-select: none; touch-action: none; }
#error { color: #f88; overflow-wrap: anywhere; }
.class { margin: .4rem 0; }
.thumbs { display: flex; flex-wrap: wrap; gap: .3rem; }
.thumb { position: relative; }
.thumb img { width: 64px; height: 64px; display: block; }
.thumb button { position: absolute; top: 0; right: 0; margin: 0; padding: 0 .3rem; }
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
function text(id, value) { $(id).textContent = value; }
// --threshold, from /v1/model: under it the label is "unknown", shown dimmed (no class has that name then).
let threshold = 0;
function unknownUnder(m) {
  threshold = m.threshold || 0;
  return threshold ? "; unknown under " + (100 * threshold).toFixed(1) + " %" : "";
}
// Where the model came from (GET /v1/model's origin): shipped, taught here, or deployed from a run.
function originOf(o) {
  if (!o) { return ""; }
  if (o.kind === "deployed") {
    return "; deployed from run " + (o.run || "?") + " (" + (o.variant || "?") + ") at " + o.at
         + " by " + o.by;
  }
  return o.kind === "taught" ? "; taught here at " + o.at : "; shipped";
}
function describe(m) {
  return m.file + " (" + m.variant + ", " + m.input.width + "x" + m.input.height + "), labels: "
       + m.labels.join(", ") + unknownUnder(m) + originOf(m.origin);
}
function show(r) {
  text("label", r.label === undefined ? "\\u2014" : r.label);
  $("label").classList.toggle("unknown", threshold > 0 && r.label === "unknown");
  text("score", r.score === undefined ? "" : (100 * r.score).toFixed(1) + " %");
  text("fps", r.fps === undefined ? "" : r.fps.toFixed(1));
  text("invoke", r.invoke_ms === undefined ? "" : r.invoke_ms.toFixed(2));
  text("frame", String(r.frame || 0));
  text("state", r.state || "");
  const list = $("top");
  list.replaceChildren(...(r.top || []).map((t) => {
    const li = document.createElement("li");
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = t.label + "  " + (100 * t.score).toFixed(1) + " %";
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = Math.max(0, Math.min(100, 100 * t.score)) + "%";
    bar.append(fill);
    li.append(name, bar);
    return li;
  }));
}
fetch("v1/model").then((r) => r.json()).then((m) => text("model", describe(m)))
  .catch(() => text("model", "model: unavailable"));
fetch("v1/latest").then((r) => r.ok ? r.json() : Promise.reject(r)).then((r) => {
  show(r);
  $("stream").src = "stream.mjpg";
  if (window.EventSource) {
    const events = new EventSource("events");
    events.onmessage = (e) => show(JSON.parse(e.data));
    events.onerror = () => text("state", "reconnecting");
  } else {
    setInterval(() => fetch("v1/latest").then((r) => r.json()).then(show).catch(() => {}), 500);
  }
}).catch(() => { text("state", "no camera: this server answers the API only"); $("view").hidden = true; });

// --- Teach: captures per class, hold-to-record, "Train here". Text from the server
// (labels, names, errors) goes in with textContent only.
const RECORD_EVERY_MS = 300;  // a few frames a second...
const RECORD_MAX = 60;        // ...and at most this many per press
let recording = null;
function say(message) { text("error", message || ""); }
function path(label, name) {
  return "v1/captures/" + encodeURIComponent(label) + (name ? "/" + encodeURIComponent(name) : "");
}
async function call(method, url, body) {
  const r = await fetch(url, { method: method, body: body });
  const data = (r.headers.get("Content-Type") || "").startsWith("application/json") ? await r.json() : {};
  if (!r.ok) { throw new Error(data.error || ("HTTP " + r.status)); }
  return data;
}
function button(label, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.onclick = onclick;
  return b;
}
function thumb(label, name, extra) {
  const t = document.createElement("div");
  t.className = "thumb";
  const img = document.createElement("img");
  img.src = path(label, name);
  img.alt = label + "/" + name;
  t.append(img, button("\u00d7", () => call("DELETE", path(label, name)).then(counts)
    .catch((e) => say(e.message))));
  if (extra) { t.append(extra); }
  return t;
}
async function counts() {
  let c;
  try { c = await call("GET", "v1/captures"); } catch (e) {
    $("teach").hidden = e.message.includes("--captures");
    return;
  }
  const rows = Object.entries(c.classes).map(([label, entry]) => {
    const row = document.createElement("div");
    row.className = "class";
    const head = document.createElement("div");
    head.className = "name";
    head.textContent = label + ": " + entry.count;
    head.append(button("delete all", () => call("DELETE", path(label)).then(counts)
      .catch((e) => say(e.message))));
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    thumbs.append(...(entry.recent || []).map((name) => thumb(label, name)));
    row.append(head, thumbs);
    return row;
  });
  $("classes").replaceChildren(...rows);
  text("used", (c.bytes / 1e6).toFixed(1) + " of " + (c.limit_bytes / 1e6).toFixed(0) + " MB");
  text("unsure-count", String(c.unsure.count));
  $("unsure").replaceChildren(...(c.unsure.recent || []).map((name) => thumb("_unsure", name,
    button("\u2192 class", () => {
      const label = $("class").value.trim();
      if (!label) { say("type the class name to move it into first"); return; }
      call("POST", path(label, name) + "?from=_unsure").then(counts).catch((e) => say(e.message));
    }))));
}
function startRecording(e) {
  e.preventDefault();
  const label = $("class").value.trim();
  if (!label) { say("type a class name first"); return; }
  say("");
  stopRecording();
  let kept = 0;
  const take = () => {
    if (kept >= RECORD_MAX) { stopRecording(); return; }
    kept += 1;
    call("POST", path(label)).then((r) => text("recorded", label + ": " + r.count))
      .catch((err) => { say(err.message); stopRecording(); });
  };
  take();
  recording = setInterval(take, RECORD_EVERY_MS);
}
function stopRecording() {
  if (recording !== null) { clearInterval(recording); recording = null; counts(); }
}
$("record").addEventListener("pointerdown", startRecording);
for (const ev of ["pointerup", "pointerleave", "pointercancel"]) {
  $("record").addEventListener(ev, stopRecording);
}
function showTeach(job) {
  let line = job.state;
  if (job.state === "running") { line += " (" + job.seconds + " s)"; }
  if (job.state === "done") {
    line += " in " + job.seconds + " s: labels " + job.labels.join(", ") + ", "
      + (100 * job.accuracy).toFixed(1) + " % on the photos taught";
  }
  if (job.state === "failed") { line += ": " + job.error; }
  text("progress", line);
}
async function follow() {
  const job = await call("GET", "v1/teach");
  showTeach(job);
  if (job.state === "running") { setTimeout(() => follow().catch((e) => say(e.message)), 500); return; }
  if (job.state === "done") {
    text("model", describe(await call("GET", "v1/model")));
  }
}
$("train").addEventListener("click", () => {
  say("");
  call("POST", "v1/teach", JSON.stringify({ replace: $("replace").checked }))
    .then(showTeach).then(follow).catch((e) => say(e.message));
});
$("rollback").addEventListener("click", () => {
  call("POST", "v1/model/rollback").then((m) => text("model", describe(m))).catch((e) => say(e.message));
});
counts();
"""

PAGE_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>noodle-edge</title>
<style>{style}</style>
</head>
<body>
<main>
  <div id="view"><img id="stream" alt="the camera"></div>
  <div id="side">
    <div class="small">label</div>
    <div id="label">&#8212;</div>
    <div id="score"></div>
    <ul id="top"></ul>
    <div class="small">fps <span id="fps"></span> &#183; invoke <span id="invoke"></span> ms
      &#183; frame <span id="frame"></span> &#183; <span id="state"></span></div>
    <p class="small" id="model"></p>
    <p class="small">API: POST /v1/classify, GET /v1/model, /v1/latest, /healthz, /metrics</p>
  </div>
  <section id="teach">
    <div><input id="class" maxlength="100" placeholder="class name" aria-label="class name">
      <button type="button" id="record">hold to record</button>
      <span id="recorded" class="small"></span></div>
    <div id="error"></div>
    <div id="classes"></div>
    <div class="small">captures: <span id="used"></span> &#183;
      unsure frames: <span id="unsure-count"></span></div>
    <div id="unsure" class="thumbs"></div>
    <div><button type="button" id="train">Train here</button>
      <label class="small"><input type="checkbox" id="replace"> only these classes</label>
      <button type="button" id="rollback">roll back</button> <span id="progress" class="small"></span></div>
  </section>
</main>
<script>{script}</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = PAGE_TEMPLATE.format(style=STYLE, script=SCRIPT).encode()
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    # Only this page's own script and style run, and it talks only to this server.
    "Content-Security-Policy": f"default-src 'none'; script-src {_sha256(SCRIPT)}; "
                               f"style-src {_sha256(STYLE)}; img-src 'self'; connect-src 'self'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
