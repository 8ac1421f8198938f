"""The live view's page: plain HTML and a little JavaScript, served by the app itself (no CDN, no build step).

It polls ``GET /streams`` every second, keeps one card per stream (state with its reason, pipeline, fps, latency
p50/p99, drops, the MJPEG video at ``/streams/{id}/video``, and a scanner stream's latest bags) and offers the
add/remove actions of the REST API where the server allows them.  A ``?token=`` in the page's address is sent
on every request (``Authorization: Bearer``, or ``?token=`` for images).
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>amodal live view</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1em; background: #f4f4f4; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .4em 0; }
  table { border-collapse: collapse; margin-bottom: 1em; background: #fff; }
  th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; font-size: .9em; }
  .state-up { color: #176d17; font-weight: bold; }
  .state-connecting, .state-reconnecting { color: #b26b00; font-weight: bold; }
  .state-error { color: #b00000; font-weight: bold; }
  .state-ended { color: #666; font-weight: bold; }
  #cards { display: flex; flex-wrap: wrap; gap: 1em; }
  .card { background: #fff; border: 1px solid #ccc; padding: .5em; max-width: 660px; }
  .card h2 { font-size: 1em; margin: 0 0 .3em 0; }
  .video { display: block; max-width: 640px; background: #333; min-width: 160px; min-height: 90px; }
  .bags { display: flex; flex-wrap: wrap; gap: .4em; margin-top: .4em; }
  .bag { font-size: .8em; width: 170px; }
  .bag img { width: 160px; display: block; }
  #health { font-size: .9em; margin-bottom: .6em; }
  form { margin-bottom: 1em; font-size: .9em; }
  .error { color: #b00000; }
</style>
</head>
<body>
<h1>amodal live view <span id="mode"></span></h1>
<div id="health">health: <span id="health-status">…</span> <span id="health-problems"></span></div>
<form id="add-form" hidden>
  add a source: <input id="add-uri" placeholder="synthetic://shapes or rtsp://…" size="40">
  id <input id="add-id" size="8" placeholder="(auto)"> pipeline <input id="add-pipeline" size="10" placeholder="(default)">
  <button type="submit">add</button> <span id="add-error" class="error"></span>
</form>
<table id="streams">
  <thead><tr><th>stream</th><th>pipeline</th><th>state</th><th>fps</th><th>latency p50 / p99 ms</th>
  <th>dropped</th><th>frames</th><th></th></tr></thead>
  <tbody></tbody>
</table>
<div id="cards"></div>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token");
const headers = token ? {"Authorization": "Bearer " + token} : {};
const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
const cards = new Map();
let canControl = false;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function stateText(s) {
  let t = s.state;
  if (s.reason && s.state !== "up") t += " (" + s.reason + ")";
  if (s.last_error) t += " — last error: " + s.last_error;
  return t;
}

function row(s) {
  const tr = el("tr", {"data-stream": s.id, "id": "row-" + s.id});
  tr.append(el("td", {}, s.id), el("td", {}, (s.pipeline || "") + (s.analyzer ? " (" + s.analyzer + ")" : "")),
            el("td", {"class": "state state-" + s.state}, stateText(s)), el("td", {"class": "fps"}, fmt(s.fps, 1)),
            el("td", {}, fmt(s.latency_p50_ms, 1) + " / " + fmt(s.latency_p99_ms, 1)),
            el("td", {"class": "dropped"}, String(s.dropped)), el("td", {}, String(s.frames)));
  const td = el("td");
  if (canControl) {
    const b = el("button", {"class": "remove"}, "remove");
    b.onclick = () => fetch("streams/" + encodeURIComponent(s.id), {method: "DELETE", headers}).then(refresh);
    td.append(b);
  }
  tr.append(td);
  return tr;
}

function card(s) {
  let c = cards.get(s.id);
  if (!c) {
    c = el("div", {"class": "card", "id": "card-" + s.id, "data-stream": s.id});
    c.append(el("h2", {}, s.id));
    const img = el("img", {"class": "video", "alt": "live video of " + s.id,
                           "src": withToken("streams/" + encodeURIComponent(s.id) + "/video")});
    c.append(img, el("div", {"class": "bags"}));
    document.getElementById("cards").append(c);
    cards.set(s.id, c);
  }
  c.querySelector("h2").textContent = s.id + " — " + stateText(s);
  const bags = c.querySelector(".bags");
  const key = s.bags.map(b => b.frame_index).join(",");
  if (s.kind === "scanner" && bags.dataset.key !== key) {
    bags.dataset.key = key;
    bags.replaceChildren(...s.bags.map(b => {
      const d = el("div", {"class": "bag"});
      d.append(el("img", {"alt": "bag " + b.frame_index,
                          "src": withToken("streams/" + encodeURIComponent(s.id) + "/bags/" + b.frame_index + ".jpg")}));
      d.append(el("div", {}, "bag " + b.frame_index + ": " + (b.items.length ? "" : "nothing found")));
      for (const i of b.items) {
        d.append(el("div", {}, i.class_name + " " + i.score.toFixed(2) +
          (i.occlusion_level !== null ? " occ " + Math.round(100 * i.occlusion_level) + "%" : "") +
          (i.has_occluder ? " (occluded)" : "")));
      }
      return d;
    }));
  }
}

async function refresh() {
  try {
    const r = await fetch("streams", {headers});
    if (!r.ok) { document.getElementById("health-status").textContent = "HTTP " + r.status; return; }
    const body = await r.json();
    canControl = body.control;
    document.getElementById("mode").textContent = body.control ? "" : "(results of " + body.source + ")";
    document.getElementById("add-form").hidden = !body.control;
    const tbody = document.querySelector("#streams tbody");
    tbody.replaceChildren(...body.streams.map(row));
    const seen = new Set(body.streams.map(s => s.id));
    for (const s of body.streams) card(s);
    for (const [id, c] of cards) if (!seen.has(id)) { c.querySelector("img.video").src = ""; c.remove(); cards.delete(id); }
    const h = await fetch("health", {headers});
    const hb = await h.json();
    document.getElementById("health-status").textContent = hb.status;
    document.getElementById("health-problems").textContent = (hb.problems || []).join("; ");
  } catch (e) {
    document.getElementById("health-status").textContent = "no answer (" + e + ")";
  }
}

document.getElementById("add-form").onsubmit = async (ev) => {
  ev.preventDefault();
  const body = {uri: document.getElementById("add-uri").value};
  const id = document.getElementById("add-id").value, pipeline = document.getElementById("add-pipeline").value;
  if (id) body.stream_id = id;
  if (pipeline) body.pipeline = pipeline;
  const r = await fetch("streams", {method: "POST", headers: {...headers, "Content-Type": "application/json"},
                                    body: JSON.stringify(body)});
  const out = await r.json();
  document.getElementById("add-error").textContent = r.ok ? "" : JSON.stringify(out.detail);
  refresh();
};
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
