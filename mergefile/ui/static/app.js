// The page: edit-and-see, graph, target view, builds with live progress, cache and history.
// Everything shown comes from the server's JSON; nothing is planned or built here.
"use strict";

// ---- tabs
function show(view) {
  document.querySelectorAll(".tab").forEach(b => b.classList.toggle("active", b.dataset.view === view));
  document.querySelectorAll(".view").forEach(s => s.classList.toggle("active", s.id === "view-" + view));
  if (view === "cache") loadCache();
  if (view === "target") loadTarget();
  if (view === "evolve") loadEvolve();
}
document.querySelectorAll(".tab").forEach(b => b.addEventListener("click", () => show(b.dataset.view)));

// ---- editor: every change is parsed and planned by the server (as -n --explain)
function drawGutter(errorLine) {
  const n = $("source").value.split("\n").length;
  const g = $("gutter");
  g.textContent = "";
  for (let i = 1; i <= n; i++) {
    const s = h("span", i === errorLine ? "err" : "", String(i));
    g.appendChild(s);
  }
  g.scrollTop = $("source").scrollTop;
}
$("source").addEventListener("scroll", () => { $("gutter").scrollTop = $("source").scrollTop; });
$("source").addEventListener("input", () => {
  markDirty();
  drawGutter(null);
  clearTimeout(state.planTimer);
  state.planTimer = setTimeout(plan, 250);
});
function markDirty() {
  const dirty = $("source").value !== state.saved;
  text($("dirty"), dirty ? "unsaved changes (builds use the saved file)" : "saved");
}
async function plan() {
  const seq = ++state.planSeq;
  const view = await api("/api/plan", { text: $("source").value });
  if (seq === state.planSeq) applyView(view);
}
$("error").addEventListener("click", () => {  // put the caret at the error
  const line = Number($("error").dataset.line), col = Number($("error").dataset.column) || 1;
  if (!line) return;
  const lines = $("source").value.split("\n"), at = lines.slice(0, line - 1).join("\n").length + (line > 1) + col - 1;
  $("source").focus();
  $("source").setSelectionRange(at, at);
});
$("save").addEventListener("click", async () => {
  const value = $("source").value;
  const r = await api("/api/save", { text: value });
  state.saved = value;
  markDirty();
  applyView(r.view);
});

function applyView(view) {
  const err = $("error");
  if (!view.ok) {
    const e = view.error;
    err.classList.remove("hidden");
    err.dataset.line = e.line || "";
    err.dataset.column = e.column || "";
    text(err, (e.line ? `line ${e.line}, column ${e.column}\n` : "") + e.message);
    drawGutter(e.in_this_file ? e.line : null);
    text($("summary"), "recipe has an error");
    return;  // keep the last good graph on screen
  }
  err.classList.add("hidden");
  drawGutter(null);
  state.view = view;
  render();
}

// ---- graph, target list and summary
function liveStates() {
  const s = {};
  for (const name of Object.keys(state.live.failed)) s[name] = "failed";
  for (const b of state.live.builds) if (b.state === "running") for (const t of Object.keys(b.progress)) s[t] = "building";
  for (const name of Object.keys(state.live.building)) s[name] = "building";
  return s;
}
function render() {
  const view = state.view;
  if (!view) return;
  const states = liveStates();
  drawGraph($("graph"), view, states, name => { state.target = name; show("target"); });
  const list = $("targets");
  list.textContent = "";
  for (const t of view.targets) {
    const st = states[t.name] || t.state;
    const row = h("div", "trow");
    row.dataset.target = t.name;
    const name = h("span", "name", t.name);
    name.addEventListener("click", () => { state.target = t.name; show("target"); });
    row.append(name, h("span", "badge " + st, st === "fresh" ? "up to date" : st), h("span", "note", t.note));
    const b = h("button", "", "Build");
    b.disabled = st === "building";
    b.addEventListener("click", () => startBuild(t.name));
    row.appendChild(b);
    list.appendChild(row);
  }
  text($("summary"), view.stale_targets ? `${view.stale_targets} stale target(s), ${view.stale_tensors} stale tensor(s)`
                                        : "everything up to date");
  const sel = $("target-select");
  const names = view.targets.map(t => t.name);
  if (sel.options.length !== names.length || [...sel.options].some((o, i) => o.value !== names[i])) {
    sel.textContent = "";
    names.forEach(n => sel.appendChild(new Option(n, n)));
  }
  if (!state.target || !names.includes(state.target)) state.target = names[0] || null;
  sel.value = state.target || "";
  renderRuns();
}
function renderRuns() {
  const box = $("runs");
  const others = state.live.runs.filter(r => !r.page);
  box.textContent = "";
  for (const r of others) {
    const counts = Object.entries(r.tensors).map(([t, n]) => `${t}: ${n} tensor${n === 1 ? "" : "s"} done`).join(", ") || "planning";
    box.appendChild(h("div", "", `running elsewhere: pid ${r.pid} (mergebuild ${r.argv.join(" ")}) — ${counts}`));
  }
}

// ---- builds
async function startBuild(name) {
  state.target = name;
  try {
    await api("/api/build", { target: name });
  } catch (e) {
    showBuildError(e.message);
  }
  show("target");
}
function showBuildError(message) {
  const box = $("progress");
  box.appendChild(h("div", "build-msg err", message));
}
$("build").addEventListener("click", () => state.target && startBuild(state.target));
$("cancel").addEventListener("click", async () => {
  const b = currentBuild();
  if (b) await api("/api/cancel", { id: b.id });
});
function currentBuild() {
  return [...state.live.builds].reverse().find(b => b.target === state.target || state.target in b.progress);
}
function renderProgress() {
  const box = $("progress");
  const b = currentBuild();
  box.textContent = "";
  $("cancel").disabled = !(b && b.state === "running");
  if (!b) return;
  for (const [t, p] of Object.entries(b.progress)) {
    const pct = p.total ? Math.round(100 * p.done / p.total) : 100;
    const row = h("div", "prog" + (pct >= 100 ? " done" : ""));
    row.dataset.target = t;
    row.dataset.pct = pct;
    const track = h("div", "track"), fill = h("div", "fill");
    fill.style.width = pct + "%";
    track.appendChild(fill);
    row.append(h("span", "label", t), track, h("span", "count", `${p.done}/${p.total} tensors (${pct}%)`));
    box.appendChild(row);
  }
  const lines = [...b.messages, ...b.lines];
  if (b.state !== "running") lines.push(`build ${b.id}: ${b.state}`);
  if (lines.length) box.appendChild(h("div", "build-msg", lines.join("\n")));
  if (b.error) box.appendChild(h("div", "build-msg err", b.error));
}
function onStatus(snap) {
  const evolveChanged = JSON.stringify(snap.evolve) !== JSON.stringify(state.live.evolve);
  state.live = snap;
  if (evolveChanged && $("view-evolve").classList.contains("active")) loadEvolve();
  let ended = false;
  for (const b of snap.builds) {
    if (b.state !== "running" && !state.ended.has(b.id)) { state.ended.add(b.id); ended = true; }
  }
  if (ended) {  // outputs changed: plan again (the draft in the editor) and refresh the views
    plan();
    if ($("view-target").classList.contains("active")) loadTarget();
  } else {
    render();
  }
  renderProgress();
}
function connect() {
  const es = new EventSource("/api/events?token=" + encodeURIComponent(TOKEN));
  es.addEventListener("status", ev => onStatus(JSON.parse(ev.data)));
  es.onopen = () => $("live").classList.add("on");
  es.onerror = () => $("live").classList.remove("on");
}

// ---- start
(async function init() {
  const r = await api("/api/recipe");
  text($("recipe-path"), r.path.split("/").slice(-2).join("/"));
  $("recipe-path").title = r.path;
  $("source").value = r.text;
  state.saved = r.text;
  markDirty();
  applyView(r.view);
  connect();
  document.body.dataset.ready = "1";
})();
