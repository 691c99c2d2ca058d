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
#top { list-style: none; padding: 0; }
#top li { margin: .4rem 0; }
.name { overflow-wrap: anywhere; }
.bar { background: #333; height: .6rem; border-radius: .3rem; }
.fill { background: #4caf50; height: 100%; border-radius: .3rem; width: 0; }
.small { color: #aaa; font-size: .85rem; }
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
function text(id, value) { $(id).textContent = value; }
function show(r) {
  text("label", r.label === undefined ? "\\u2014" : r.label);
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
fetch("v1/model").then((r) => r.json()).then((m) => {
  text("model", m.file + " (" + m.variant + ", " + m.input.width + "x" + m.input.height + "), labels: "
       + m.labels.join(", "));
}).catch(() => text("model", "model: unavailable"));
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
