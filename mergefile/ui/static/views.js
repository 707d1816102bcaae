// The target, cache-and-history and evolve views: drawn from the server's JSON (views.py,
// evolve_view.py); the heat maps and charts are plain tables and SVG.
"use strict";

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
