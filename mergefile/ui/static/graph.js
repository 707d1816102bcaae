// The target graph as SVG, laid out here (no Graphviz): nodes in columns by their longest path
// from an input model, ordered inside a column by the mean position of their inputs (one
// barycentre sweep, enough for recipes of tens of targets), edges as cubic curves.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 192, NODE_H = 54, COL_GAP = 46, ROW_GAP = 16, PAD = 10;

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function layout(nodes, edges) {
  const preds = new Map(nodes.map(n => [n.id, []]));
  for (const [s, d] of edges) if (preds.has(d) && preds.has(s)) preds.get(d).push(s);
  const rank = new Map();
  const rankOf = (id, seen = new Set()) => {
    if (rank.has(id)) return rank.get(id);
    if (seen.has(id)) return 0;  // a cycle cannot plan; draw it anyway
    seen.add(id);
    const r = Math.max(-1, ...preds.get(id).map(p => rankOf(p, seen))) + 1;
    rank.set(id, r);
    return r;
  };
  nodes.forEach(n => rankOf(n.id));
  const columns = [];
  for (const n of nodes) (columns[rank.get(n.id)] ||= []).push(n);
  const pos = new Map();
  columns.forEach((col, c) => {
    if (c > 0) {
      const bary = n => {
        const ps = preds.get(n.id).filter(p => pos.has(p));
        return ps.length ? ps.reduce((a, p) => a + pos.get(p).row, 0) / ps.length : 1e9;
      };
      col.sort((a, b) => bary(a) - bary(b) || a.name.localeCompare(b.name));
    }
    col.forEach((n, i) => pos.set(n.id, { col: c, row: i }));
  });
  const height = Math.max(...columns.map(col => col.length)) * (NODE_H + ROW_GAP);
  for (const col of columns) {  // centre each column vertically
    const off = (height - col.length * (NODE_H + ROW_GAP)) / 2;
    for (const n of col) {
      const p = pos.get(n.id);
      p.x = PAD + p.col * (NODE_W + COL_GAP);
      p.y = PAD + off + p.row * (NODE_H + ROW_GAP);
    }
  }
  return { pos, width: PAD * 2 + columns.length * (NODE_W + COL_GAP) - COL_GAP, height: height + PAD * 2 };
}

function clip(text, n) { return text.length > n ? text.slice(0, n - 1) + "…" : text; }

// view: the server's plan view; states: target -> state override (building, failed);
// onClick(targetName).
function drawGraph(container, view, states, onClick) {
  const nodes = [
    ...view.models.map(m => ({ ...m, kind: "model", lines: [m.name, m.hub ? "hf: " + m.hub[0] : m.path.split("/").slice(-2).join("/")] })),
    ...view.targets.map(t => ({ ...t, kind: "target", state: states[t.name] || t.state,
                                lines: [t.name, `${t.method} · ${t.tensors} tensors`, states[t.name] === "building" ? "building…" : states[t.name] === "failed" ? "last build failed" : t.note.replace(/^stale: /, "")] })),
    ...view.groups.map(g => ({ ...g, kind: "group", lines: [g.name, "group"] })),
  ];
  const { pos, width, height } = layout(nodes, view.edges);
  container.textContent = "";
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" }, container);
  svg.style.width = "100%";  // scaled down to the pane, never up (CSSOM: allowed by the page's CSP)
  svg.style.maxWidth = `${width}px`;
  svg.style.height = "auto";
  const defs = el("defs", {}, svg);
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" }, defs);
  el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8b95a5" }, marker);
  for (const [s, d, label] of view.edges) {
    const a = pos.get(s), b = pos.get(d);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2, mx = (x1 + x2) / 2;
    el("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }, svg);
    if (label) el("text", { class: "edge-label", x: x1 + 6, y: y1 - 4 }, svg).textContent = label;
  }
  for (const n of nodes) {
    const p = pos.get(n.id);
    const g = el("g", { class: `node ${n.kind} ${n.state || ""}`, transform: `translate(${p.x},${p.y})`,
                        "data-id": n.id, "data-state": n.state || "" }, svg);
    el("rect", { width: NODE_W, height: NODE_H, rx: n.kind === "model" ? 14 : 6 }, g);
    n.lines.forEach((line, i) => {
      const t = el("text", { x: 10, y: 18 + i * 15, class: i ? "sub" : "" }, g);
      t.textContent = clip(String(line), i ? 30 : 26);
      if (!i) t.setAttribute("font-weight", "600");
    });
    const title = el("title", {}, g);
    title.textContent = n.kind === "target" ? `${n.name}: ${n.note}` : (n.path || n.name);
    if (n.kind === "target") g.addEventListener("click", () => onClick(n.name));
  }
}
