// The page: edit-and-see, graph, target view, builds with live progress, cache and history.
// Everything shown comes from the server's JSON; nothing is planned or built here.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = id => document.getElementById(id);
const state = { view: null, live: { builds: [], building: {}, failed: {}, runs: [] }, target: null,
                saved: "", planTimer: null, planSeq: 0, heat: null, ended: new Set() };

async function api(path, body) {
  const opts = { headers: { "x-mergebuild-token": TOKEN } };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function text(node, value) { node.textContent = value; return node; }
function h(tag, cls, content) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (content !== undefined) e.textContent = content;
  return e;
}
function human(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

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
    const counts = Object.entries(r.tensors).map(([t, n]) => `${t}: ${n} tensors`).join(", ") || "planning";
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

// ---- target view
$("target-select").addEventListener("change", e => { state.target = e.target.value; loadTarget(); });
$("param-select").addEventListener("change", () => drawHeat());
async function loadTarget() {
  if (!state.target) return;
  const t = await api("/api/target?name=" + encodeURIComponent(state.target));
  const st = liveStates()[t.name] || t.state;
  const badge = $("target-state");
  badge.className = "badge " + st;
  text(badge, st === "fresh" ? "up to date" : st);
  text($("target-note"), `${t.method}, ${t.tensors} tensors from ${t.inputs.join(", ")} → ${t.out_dir}`);
  text($("target-text"), t.text);
  text($("target-explain"), t.explain.join("\n"));
  state.heat = t.heat;
  const sel = $("param-select"), keep = sel.value;
  sel.textContent = "";
  Object.keys(t.heat.params).forEach(p => sel.appendChild(new Option(p, p)));
  const varied = Object.keys(t.heat.params).find(p => spread(t.heat.params[p]) > 0);
  sel.value = keep in t.heat.params ? keep : (varied || sel.options[0]?.value || "");
  drawHeat();
  drawTimes(t.times);
  renderProgress();
}
function spread(rows) {
  const v = rows.flat().filter(x => x !== null);
  return v.length ? Math.max(...v) - Math.min(...v) : 0;
}
function drawHeat() {
  const box = $("heat"), heat = state.heat, name = $("param-select").value;
  box.textContent = "";
  if (!heat || !name) { box.appendChild(h("p", "muted", "no numeric parameters")); return; }
  const rows = heat.params[name], vals = rows.flat().filter(x => x !== null);
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const table = h("table"), head = h("tr");
  head.appendChild(h("th"));
  heat.columns.forEach(c => head.appendChild(h("th", "", c)));
  const thead = h("thead");
  thead.appendChild(head);
  table.appendChild(thead);
  rows.forEach((row, i) => {
    const tr = h("tr");
    tr.appendChild(h("th", "", heat.kinds[i].replace(/^model\./, "")));
    row.forEach((v, j) => {
      const td = h("td", v === null ? "cell none" : "cell");
      if (v !== null) {
        const f = hi > lo ? (v - lo) / (hi - lo) : 0.5;
        td.style.background = `hsl(${220 - 200 * f}, 70%, ${88 - 30 * f}%)`;
        td.title = `${heat.kinds[i]} ${heat.columns[j]}: ${name} = ${v}`;
        td.dataset.value = v;
      }
      tr.appendChild(td);
    });
    table.appendChild(tr);
  });
  box.appendChild(table);
  box.appendChild(h("div", "scale", vals.length ? `${name}: ${lo} (blue) … ${hi} (red)` : ""));
}
function drawTimes(times) {
  const box = $("times");
  box.textContent = "";
  text($("times-run"), times.run_id ? `run ${times.run_id}, ${times.total} tensors, slowest first` : "not built yet");
  const rows = times.tensors.filter(r => r.seconds != null).slice(0, 25);
  const max = Math.max(1e-9, ...rows.map(r => r.seconds));
  for (const r of rows) {
    const line = h("div", "t");
    const bar = h("div", "b");
    bar.style.width = Math.max(1, 100 * r.seconds / max) + "%";
    const track = h("div");
    track.appendChild(bar);
    line.append(h("span", "n", r.tensor), track, h("span", "ms", `${(1000 * r.seconds).toFixed(1)} ms`));
    box.appendChild(line);
  }
  const hits = times.tensors.filter(r => r.status === "hit").length;
  if (hits) box.appendChild(h("div", "muted", `${hits} tensor(s) came from the cache`));
}

// ---- cache and history
async function loadCache() {
  const c = await api("/api/cache");
  const cards = $("cache-cards");
  cards.textContent = "";
  const rate = c.totals.hit_rate === null ? "n/a" : Math.round(100 * c.totals.hit_rate) + "%";
  for (const [k, v] of [["size", `${human(c.volume_bytes)} of ${human(c.size_limit_bytes)}`], ["entries", c.entries],
                        ["hit rate (last builds)", rate], ["input bytes saved", human(c.totals.bytes_saved)],
                        ["builds logged", c.totals.runs]]) {
    const s = h("div", "stat");
    s.append(h("div", "v", String(v)), h("div", "k", k));
    cards.appendChild(s);
  }
  const kinds = $("kinds");
  kinds.textContent = "";
  kinds.appendChild(rowOf("th", ["kind", "entries", "size"]));
  for (const [k, v] of Object.entries(c.by_kind)) kinds.appendChild(rowOf("td", [k, v.entries, human(v.bytes)]));
  const gc = c.gc_preview;
  text($("gc"), gc.error ? `cannot tell what is in use: ${gc.error}`
                         : `cache gc would drop ${gc.would_drop} unused entries (${human(gc.would_drop_bytes)})`);
  drawChart(c.runs);
  const log = $("log");
  log.textContent = "";
  log.appendChild(rowOf("th", ["run", "command", "computed", "hits", "saved", "seconds"]));
  for (const r of [...c.runs].reverse()) {
    const tr = rowOf("td", [r.run_id, r.argv.join(" "), r.computed + r.recomputed, r.hits, human(r.bytes_saved),
                            r.seconds == null ? "—" : r.seconds.toFixed(2)]);
    tr.className = "run";
    tr.addEventListener("click", () => showRun(r.run_id));
    log.appendChild(tr);
  }
}
function rowOf(cell, values) {
  const tr = h("tr");
  values.forEach(v => tr.appendChild(h(cell, "", String(v))));
  return tr;
}
async function showRun(runId) {
  const r = await api("/api/log?run=" + encodeURIComponent(runId));
  const lines = r.records.filter(x => x.tensor).map(x =>
    `${x.status.padEnd(10)} ${x.target}  ${x.tensor}${x.seconds != null ? `  ${(1000 * x.seconds).toFixed(1)} ms` : ""}`);
  text($("log-records"), `${r.run_id}: ${lines.length} tensor records\n` + lines.join("\n"));
}
function drawChart(runs) {
  const box = $("chart");
  box.textContent = "";
  if (!runs.length) { box.appendChild(h("p", "muted", "no builds logged yet")); return; }
  const W = 520, H = 150, L = 34, B = 20, bw = Math.min(36, (W - L) / runs.length - 6);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H + 30}` }, box);
  const maxSaved = Math.max(1, ...runs.map(r => r.bytes_saved));
  el("line", { x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#c5cbd4" }, svg);
  text(el("text", { x: 2, y: 12 }, svg), "100%");
  text(el("text", { x: 2, y: H - B }, svg), "0%");
  runs.forEach((r, i) => {
    const x = L + 6 + i * (bw + 6), rate = r.hit_rate || 0, hh = (H - B - 10) * rate;
    const bar = el("rect", { x, y: H - B - hh, width: bw / 2, height: Math.max(hh, 1), fill: "#3b5bdb", rx: 2 }, svg);
    text(el("title", {}, bar), `${r.run_id}: hit rate ${Math.round(100 * rate)}%`);
    const sh = (H - B - 10) * r.bytes_saved / maxSaved;
    const saved = el("rect", { x: x + bw / 2, y: H - B - sh, width: bw / 2, height: Math.max(sh, 1), fill: "#2a7a2a", rx: 2 }, svg);
    text(el("title", {}, saved), `${r.run_id}: ${human(r.bytes_saved)} of input not read`);
    text(el("text", { x, y: H - 4 }, svg), "#" + (i + 1));
  });
  const legend = el("text", { x: L, y: H + 22 }, svg);
  legend.textContent = `blue: hit rate · green: input bytes saved (max ${human(maxSaved)})`;
}

// ---- evolve: a search's score curve, best recipe and genes (live: the history's size is streamed)
$("evolve-select").addEventListener("change", () => loadEvolve());
async function loadEvolve() {
  const sel = $("evolve-select");
  const e = await api("/api/evolve" + (sel.value ? "?folder=" + encodeURIComponent(sel.value) : ""));
  if (!e.folder) {
    text($("evolve-note"), "no evolve search in this recipe's cache (mergebuild ui --evolve DIR shows a storage path)");
    return;
  }
  sel.textContent = "";
  e.folders.forEach(f => sel.appendChild(new Option(f.split("/").slice(-2).join("/"), f)));
  sel.value = e.folder;
  const best = e.best;
  text($("evolve-note"), `${e.evaluations} evaluations` + (best ? `, best score ${best.score} (evaluation ${best.n})` : ""));
  drawEvolveChart(e.curve);
  text($("best-recipe"), e.best_recipe || "(no best candidate yet)");
  drawGenes(best ? best.genes : {});
}
function drawEvolveChart(curve) {
  const box = $("evolve-chart");
  box.textContent = "";
  const pts = curve.filter(c => c.score !== null);
  if (!pts.length) { box.appendChild(h("p", "muted", "no scored evaluation yet")); return; }
  const W = 520, H = 200, L = 44, B = 22, T = 8;
  const lo = Math.min(...pts.map(p => p.score)), hi = Math.max(...pts.map(p => p.score));
  const n = Math.max(2, curve.length);
  const x = i => L + (W - L - 8) * (i - 1) / (n - 1);
  const y = v => hi > lo ? T + (H - B - T) * (hi - v) / (hi - lo) : (H - B + T) / 2;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}` }, box);
  el("line", { x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#c5cbd4" }, svg);
  text(el("text", { x: 2, y: T + 8 }, svg), hi.toPrecision(3));
  text(el("text", { x: 2, y: H - B }, svg), lo.toPrecision(3));
  text(el("text", { x: L, y: H - 6 }, svg), "1");
  text(el("text", { x: W - 30, y: H - 6 }, svg), String(curve.length));
  const line = curve.filter(c => c.best !== null).map(c => `${x(c.n)},${y(c.best)}`).join(" ");
  el("polyline", { points: line, fill: "none", stroke: "#2a7a2a", "stroke-width": 2, class: "best-line" }, svg);
  for (const p of pts) {
    const dot = el("circle", { cx: x(p.n), cy: y(p.score), r: 3, fill: "#3b5bdb", class: "eval" }, svg);
    text(el("title", {}, dot), `evaluation ${p.n} (generation ${p.generation}): ${p.score}`);
  }
}
function drawGenes(genes) {
  const box = $("genes");
  box.textContent = "";
  const names = Object.keys(genes);
  if (!names.length) return;
  const rows = names.map(k => [].concat(genes[k]));
  const vals = rows.flat().filter(v => typeof v === "number"), lo = Math.min(...vals), hi = Math.max(...vals);
  const table = h("table"), head = h("tr");
  head.appendChild(h("th"));
  rows[0].forEach((_, j) => head.appendChild(h("th", "", "g" + j)));
  table.appendChild(head);
  rows.forEach((row, i) => {
    const tr = h("tr");
    tr.appendChild(h("th", "", names[i]));
    row.forEach(v => {
      const td = h("td", "cell", typeof v === "number" ? v.toFixed(2) : String(v));
      if (typeof v === "number") {
        const f = hi > lo ? (v - lo) / (hi - lo) : 0.5;
        td.style.background = `hsl(${220 - 200 * f}, 70%, ${88 - 30 * f}%)`;
        td.dataset.value = v;
      }
      tr.appendChild(td);
    });
    table.appendChild(tr);
  });
  box.appendChild(table);
}

// ---- start
(async function init() {
  const r = await api("/api/recipe");
  text($("recipe-path"), r.path);
  $("source").value = r.text;
  state.saved = r.text;
  markDirty();
  applyView(r.view);
  connect();
  document.body.dataset.ready = "1";
})();
