"""The review page that `imgtune review` serves: one flagged image at a time, decided with one key,
every decision sent to the server at once (which writes RUN/corrections.csv). No network: the style and
script are in the page, the images come from the local server."""

from __future__ import annotations

from .html import page

STYLE = """
<style>
.stage{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}
.pic{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px}
.pic img{width:320px;height:320px;object-fit:contain;background:#eef0f3;display:block;border-radius:4px}
.pic .cap{font-size:12px;color:#5b6570;margin-top:4px}
.facts{flex:1 1 300px;min-width:280px}
.facts .kind{display:inline-block;border-radius:4px;padding:1px 8px;background:#eef0f3;font-size:12px}
.facts .path{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all;color:#5b6570}
.keys{margin:10px 0;padding:0;list-style:none}.keys li{margin:3px 0}
kbd{border:1px solid #c4c9d0;border-bottom-width:2px;border-radius:4px;padding:0 5px;background:#fff;font-size:12px}
.decision{font-weight:600;margin:8px 0}.decision.none{color:#5b6570;font-weight:400}
.strip{display:flex;flex-wrap:wrap;gap:4px;margin:14px 0}
.strip button{width:26px;height:22px;border:1px solid #c4c9d0;border-radius:4px;background:#fff;font-size:11px;cursor:pointer}
.strip button.keep{background:#d8eedd}.strip button.relabel{background:#fde9c8}.strip button.exclude{background:#f6d2cf}
.strip button.at{outline:2px solid #1d232a}
#reason{width:100%;box-sizing:border-box;margin:4px 0}
#status{color:#5b6570;font-size:12px;min-height:1.2em}
</style>"""

SCRIPT = """
<script>
let state = null, at = 0;
const $ = id => document.getElementById(id);
async function load() {
  state = await (await fetch('/items', {cache: 'no-store'})).json();
  const first = state.items.findIndex(it => !it.decision);
  at = first >= 0 ? first : 0;
  render();
}
function render() {
  const items = state.items;
  $('progress').textContent = items.length
    ? `${items.filter(it => it.decision).length} of ${items.length} decided` : 'Nothing was flagged in this run.';
  $('strip').innerHTML = items.map((it, i) =>
    `<button class="${it.decision ? it.decision.action : ''}${i === at ? ' at' : ''}" data-i="${i}"
      title="${it.kind}: ${it.name}">${i + 1}</button>`).join('');
  document.querySelectorAll('#strip button').forEach(b => b.onclick = () => { at = +b.dataset.i; render(); });
  if (!items.length) { $('stage').hidden = true; return; }
  const it = items[at];
  $('stage').hidden = false;
  $('image').src = `/image/${at}`;
  $('cam').src = it.suggested ? `/cam/${at}` : '';
  $('campic').hidden = !it.suggested;
  $('camcap').textContent = it.suggested ? `where the model looked for ${it.suggested}` : '';
  $('number').textContent = `${at + 1} / ${items.length}`;
  $('kind').textContent = it.kind;
  $('name').textContent = it.path;
  $('given').textContent = it.label;
  $('suggested').textContent = it.suggested ? `${it.suggested}${it.confidence !== null ? ' (' + it.confidence.toFixed(2) + ')' : ''}` : '—';
  $('why').textContent = it.why;
  const d = it.decision;
  $('decision').textContent = d ? `Decided: ${d.action}${d.label ? ' → ' + d.label : ''}${d.reason ? ' (' + d.reason + ')' : ''}` : 'Not decided yet';
  $('decision').className = 'decision' + (d ? '' : ' none');
  $('reason').value = d && d.reason ? d.reason : (it.kind === 'label' ? 'wrong label' : it.kind);
  $('classes').innerHTML = state.classes.slice(0, 9).map((c, i) => `<li><kbd>${i + 1}</kbd> relabel as ${c}</li>`).join('');
  $('r').hidden = !it.suggested || !state.classes.includes(it.suggested);
  $('rname').textContent = it.suggested || '';
}
async function decide(action, label) {
  const it = state.items[at];
  const body = {index: at, action: action, label: label || '', reason: action === 'exclude' ? $('reason').value : ''};
  const r = await fetch('/decide', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  const answer = await r.json();
  if (!r.ok) { $('status').textContent = 'Not saved: ' + answer.error; return; }
  it.decision = {action: answer.action, label: answer.label, reason: body.reason};
  $('status').textContent = `Saved to ${state.corrections}`;
  const next = state.items.findIndex((x, i) => i > at && !x.decision);
  if (next >= 0) at = next;
  render();
}
document.addEventListener('keydown', e => {
  if (!state || !state.items.length || e.target === $('reason') || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (k === 'ArrowRight' || k === 'j') { at = Math.min(at + 1, state.items.length - 1); render(); }
  else if (k === 'ArrowLeft' || k === 'k') { at = Math.max(at - 1, 0); render(); }
  else if (k === ' ' || k === 'Enter') { decide('keep'); }
  else if (k === 'x') { decide('exclude'); }
  else if (k === 'r' && state.items[at].suggested) { decide('relabel', state.items[at].suggested); }
  else if (/^[1-9]$/.test(k) && +k <= state.classes.length) { decide('relabel', state.classes[+k - 1]); }
  else return;
  e.preventDefault();
});
load();
</script>"""

BODY = """
<p id="progress" class="note">Loading…</p>
<div id="stage" class="stage" hidden>
  <div class="pic"><img id="image" alt="the flagged image"><div class="cap" id="number"></div></div>
  <div class="pic" id="campic"><img id="cam" alt="Grad-CAM"><div class="cap" id="camcap"></div></div>
  <div class="facts">
    <span class="kind" id="kind"></span>
    <p class="path" id="name"></p>
    <p>Given label: <b id="given"></b><br>Suggested: <b id="suggested"></b></p>
    <p class="note" id="why"></p>
    <p id="decision" class="decision none"></p>
    <ul class="keys">
      <li><kbd>Space</kbd> keep as is</li>
      <li id="r"><kbd>r</kbd> relabel as <span id="rname"></span></li>
      <li><kbd>x</kbd> exclude, because: <input id="reason" aria-label="reason for excluding"></li>
    </ul>
    <ul class="keys" id="classes"></ul>
    <p class="note"><kbd>←</kbd> <kbd>→</kbd> move · every decision is saved at once</p>
    <p id="status"></p>
  </div>
</div>
<div id="strip" class="strip"></div>
"""


def build_review_page() -> str:
    return page("imgtune: review what the run flagged",
                "Decide on each image: keep it, relabel it or exclude it. The images are never changed; "
                "`imgtune retrain RUN` trains with the decisions.", STYLE + BODY + SCRIPT,
                footer="Served from this machine: nothing is loaded from the network.")
