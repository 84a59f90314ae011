"""The page `imgtune serve` answers at GET /: pick or drop images, see each one's label and calibrated
probabilities. One self-contained HTML string (inline CSS and JS, no fonts, scripts or images from
elsewhere), so it works offline and behind any firewall. It sends each image to /predict on its own, so
one bad file is reported beside its name and does not sink the others."""

from __future__ import annotations

import html
import json

CSS = """
:root { --ink: #1d2430; --muted: #5f6b7a; --line: #d8dee6; --accent: #2f6fd6; --warn: #b4540a; --bad: #b42318; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
       background: #f6f8fa; }
main { max-width: 980px; margin: 0 auto; padding: 24px 20px 48px; }
header h1 { font-size: 22px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
nav { margin-top: 8px; }
nav a { color: var(--accent); margin-right: 16px; }
#drop { margin: 20px 0; padding: 28px; border: 2px dashed var(--line); border-radius: 10px; background: #fff;
        text-align: center; color: var(--muted); }
#drop.over { border-color: var(--accent); background: #eef4fd; }
#drop input { margin-top: 10px; }
#results { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 14px; }
.result { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px;
          display: grid; grid-template-columns: 96px 1fr; gap: 12px; align-items: start; }
.result img { width: 96px; height: 96px; object-fit: cover; border-radius: 6px; background: #eef1f4; }
.name { font-size: 12px; color: var(--muted); word-break: break-all; }
.label { font-size: 18px; font-weight: 600; margin: 2px 0 6px; }
.label.unknown { color: var(--warn); }
.note { font-size: 12px; color: var(--warn); margin: -4px 0 6px; }
.error { color: var(--bad); font-size: 13px; }
.bar { display: grid; grid-template-columns: minmax(60px, auto) 1fr 48px; gap: 6px; align-items: center;
       font-size: 13px; margin: 3px 0; }
.bar .track { height: 10px; background: #eef1f4; border-radius: 5px; overflow: hidden; }
.bar .fill { height: 100%; background: var(--accent); }
.bar.off .fill { background: #9aa7b6; }
.bar .value { text-align: right; font-variant-numeric: tabular-nums; color: var(--muted); }
"""

SCRIPT = """
const config = JSON.parse(document.getElementById("config").textContent);
const drop = document.getElementById("drop"), input = document.getElementById("files");
const results = document.getElementById("results");
const pct = p => (100 * p).toFixed(1) + "%";
let queue = Promise.resolve();  // one request at a time: a busy model answers them in turn anyway

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function classify(files) {
  for (const file of files) {
    const card = el("div", "result"), img = el("img"), body = el("div");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    img.onerror = () => { img.removeAttribute("src"); img.alt = ""; };  // not an image: an empty box
    body.append(el("div", "name", file.name), el("div", "status", "classifying…"));
    card.append(img, body);
    results.append(card);
    queue = queue.then(() => send(file, card, body));
  }
}

async function send(file, card, body) {
  const form = new FormData();
  form.append("file", file, file.name);
  let answer;
  try {
    const r = await fetch("predict", { method: "POST", body: form });
    answer = await r.json().catch(() => ({ error: r.status + " " + r.statusText }));
    if (!r.ok) return show(card, body, null, answer.error || r.status + " " + r.statusText);
  } catch (e) {
    return show(card, body, null, "the server did not answer (" + e.message + ")");
  }
  show(card, body, answer.predictions[0], null);
}

function bar(label, p, on) {
  const row = el("div", on ? "bar" : "bar off"), track = el("div", "track"), fill = el("div", "fill");
  row.dataset.label = label;
  row.dataset.probability = p;
  fill.style.width = pct(Math.max(0, Math.min(1, p)));
  track.append(fill);
  row.append(el("span", "bar-label", label), track, el("span", "value", pct(p)));
  return row;
}

function show(card, body, p, error) {
  body.querySelector(".status").remove();
  card.classList.add(error ? "failed" : "done");
  if (error) return body.append(el("div", "error", error));
  if (config.task === "multi") {
    body.append(el("div", "label", p.labels.length ? p.labels.join(", ") : "no label"));
    const rows = Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]);
    for (const [label, q] of rows) body.append(bar(label, q, p.labels.includes(label)));
    return;
  }
  const unknown = p.label === "unknown" && !config.classes.includes("unknown");
  body.append(el("div", unknown ? "label unknown" : "label", p.label));
  if (unknown)
    body.append(el("div", "note", pct(p.probability) + " is under the minimum confidence, " +
                                 pct(config.min_confidence)));
  p.top_k.forEach((t, i) => body.append(bar(t.label, t.probability, i === 0 && !unknown)));
}

input.addEventListener("change", () => { classify(input.files); input.value = ""; });
for (const type of ["dragenter", "dragover"])
  drop.addEventListener(type, e => { e.preventDefault(); drop.classList.add("over"); });
for (const type of ["dragleave", "drop"])
  drop.addEventListener(type, e => { e.preventDefault(); drop.classList.remove("over"); });
drop.addEventListener("drop", e => classify(e.dataTransfer.files));
"""


def page(*, title: str, classes: list[str], task: str = "single", top_k: int = 5,
         min_confidence: float | None = None, report: bool = False) -> str:
    """The HTML of the page for a model with these classes (multi-label: labels), as served with these
    settings; `report`: link to GET /report."""
    kind = "labels (multi-label)" if task == "multi" else "classes"
    facts = [f"{len(classes)} {kind}: {', '.join(classes)}"]
    if task != "multi":
        facts.append(f"top {top_k} shown")
    if min_confidence is not None:
        facts.append(f"under {min_confidence:.1%} confidence an image is “unknown”")
    links = ['<a href="docs">API documentation</a>', '<a href="metadata">metadata (JSON)</a>']
    if report:
        links.insert(0, '<a href="report">training report</a>')
    # "<" escaped so that no class name can close the <script> element
    config = json.dumps({"classes": classes, "task": task, "min_confidence": min_confidence}).replace("<", "\\u003c")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><link rel="icon" href="data:,"><style>{CSS}</style></head>
<body><main>
<header><h1>{html.escape(title)}</h1><p>{html.escape(' · '.join(facts))}</p><nav>{' '.join(links)}</nav></header>
<div id="drop">Drop images here, or choose them:<br>
<input id="files" type="file" accept="image/*" multiple></div>
<div id="results"></div>
</main>
<script type="application/json" id="config">{config}</script>
<script>{SCRIPT}</script>
</body></html>
"""
