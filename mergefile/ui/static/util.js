// Shared by the page's scripts: the token, the JSON client, small DOM helpers, the page state.
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
