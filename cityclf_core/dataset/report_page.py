"""The report's index.html: one self-contained page (inline style and script, no network, no fonts to fetch).

It loads data/meta.js, then data/chunk-NNNN.js with <script src> (what file:// allows), and keeps each column
in a Float64Array. Filtering and sorting follow `cityclf query`: every bound must hold (a row without the value
fails it); a sort leaves out rows without the value and breaks ties by row number (the store's path order);
"show N" keeps the first N of that order (--top N with highest first, --bottom N with lowest first).
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cityclf report</title>
<style>
:root { color-scheme: dark; --bg:#18181b; --panel:#232328; --fg:#ebebeb; --muted:#9a9aa6; --accent:#569cd6; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 13px/1.35 system-ui, sans-serif; }
header { display: flex; gap: 1em; align-items: baseline; padding: 8px 12px; background: var(--panel); }
header h1 { font-size: 15px; margin: 0; font-weight: 600; }
#status { color: var(--muted); }
#controls, #pager { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; padding: 6px 12px; }
#filters { display: flex; flex-wrap: wrap; gap: 8px; padding: 4px 12px; }
.filter { background: var(--panel); padding: 6px 8px; border-radius: 6px; }
.filter .name { font-weight: 600; max-width: 240px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.filter input { width: 70px; }
.filter canvas { display: block; margin-top: 4px; }
input, select, button { background: #2d2d33; color: var(--fg); border: 1px solid #44444c; border-radius: 4px; padding: 2px 5px; font: inherit; }
button { cursor: pointer; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(var(--tw, 192px), 1fr)); gap: 8px; padding: 8px 12px; }
.tile { background: var(--panel); border-radius: 6px; overflow: hidden; cursor: pointer; }
.tile .pic { height: var(--tw, 192px); display: flex; align-items: center; justify-content: center; background: #111; }
.tile img { max-width: 100%; max-height: 100%; }
.tile .cap { padding: 4px 6px; }
.tile .cap div { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.tile .main { font-weight: 600; }
.tile .tags, .tile .file { color: var(--muted); }
#detail { position: fixed; inset: 0; background: rgba(0,0,0,.85); display: flex; gap: 16px; padding: 20px; }
#detail[hidden] { display: none; }
#detail .big { flex: 1; display: flex; align-items: center; justify-content: center; min-width: 0; }
#detail .big img { max-width: 100%; max-height: calc(100vh - 40px); }
#detail .info { width: 380px; overflow: auto; background: var(--panel); padding: 10px; border-radius: 6px; }
#detail table { border-collapse: collapse; width: 100%; }
#detail td { padding: 2px 4px; border-bottom: 1px solid #33333a; vertical-align: top; }
#detail td.v { text-align: right; font-variant-numeric: tabular-nums; }
#detail .path { word-break: break-all; color: var(--muted); }
a { color: var(--accent); }
</style></head>
<body>
<header><h1 id="title">cityclf report</h1><span id="status">loading data ...</span></header>
<div id="controls">
  <label>sort by <select id="sort"><option value="">path</option></select></label>
  <label><select id="dir"><option value="desc">highest first (--top)</option><option value="asc">lowest first (--bottom)</option></select></label>
  <label>show <input id="limit" type="number" min="1" step="1" placeholder="all" style="width:80px"> rows</label>
  <label>tags contain <input id="tagq" placeholder="text" style="width:120px"></label>
  <label>per page <select id="pagesize"><option>60</option><option selected>120</option><option>240</option><option>480</option></select></label>
  <button id="reset">clear filters</button>
</div>
<div id="filters"></div>
<div id="pager"><button id="prev">&larr;</button><span id="pageinfo"></span><button id="next">&rarr;</button></div>
<div id="grid"></div>
<div id="detail" hidden><div class="big"><img id="bigimg" alt=""></div><div class="info" id="info"></div></div>
<script>
"use strict";
window.cityclfReport = (function () {
  const R = { m: null, parts: [], loaded: 0, renders: 0, pending: 0, firstPaint: null, lastUpdateMs: null, order: [] };
  const $ = (id) => document.getElementById(id);
  R.meta = (m) => { R.m = m; };
  R.chunk = (k, c) => { R.parts[k] = c; R.loaded++; if (R.loaded === R.m.chunks) build(); };
  let n = 0, cols = [], vals = [], path = [], name = [], href = [], thumb = [], tags = [], tagsLow = null, labels = {};
  let page = 0;

  function start() {
    if (!R.m) { $("status").textContent = "data/meta.js is missing: open index.html inside the report folder"; return; }
    document.title = R.m.title;
    $("title").textContent = R.m.title;
    document.documentElement.style.setProperty("--tw", Math.max(120, R.m.thumb) + "px");
    if (R.m.chunks === 0) { build(); return; }
    for (let k = 0; k < R.m.chunks; k++) {
      const s = document.createElement("script");
      s.async = false;
      s.src = "data/chunk-" + String(k).padStart(4, "0") + ".js";
      s.onerror = () => { $("status").textContent = "could not load " + s.src; };
      document.body.appendChild(s);
    }
  }

  function build() {
    const m = R.m;
    n = m.rows; cols = m.columns;
    vals = cols.map(() => new Float64Array(n));
    for (const h of m.heads) labels[h.name] = new Array(n);
    for (const c of R.parts) {
      const s = c.start, len = c.path.length;
      for (let i = 0; i < len; i++) {
        path[s + i] = c.path[i]; name[s + i] = c.name[i]; href[s + i] = c.href[i];
        thumb[s + i] = c.thumb[i]; tags[s + i] = c.tags[i];
      }
      cols.forEach((col, j) => { const src = c.values[j], dst = vals[j]; for (let i = 0; i < len; i++) dst[s + i] = src[i] === null ? NaN : src[i]; });
      for (const h of m.heads) { const src = c.label[h.name]; for (let i = 0; i < len; i++) labels[h.name][s + i] = src[i]; }
    }
    R.parts = null;
    controls();
    update();
    requestAnimationFrame(() => { R.firstPaint = performance.now(); });
  }

  function controls() {
    const sort = $("sort"), filters = $("filters");
    cols.forEach((c, j) => {
      const o = document.createElement("option"); o.value = String(j); o.textContent = c.key; sort.appendChild(o);
      const f = document.createElement("div"); f.className = "filter";
      const t = document.createElement("div"); t.className = "name"; t.textContent = c.key; t.title = c.key; f.appendChild(t);
      for (const kind of ["min", "max"]) {
        const i = document.createElement("input"); i.type = "number"; i.step = "any"; i.placeholder = kind;
        i.dataset[kind] = c.key; i.dataset.col = String(j); i.addEventListener("input", later); f.appendChild(i);
        if (kind === "min") f.appendChild(document.createTextNode(" to "));
      }
      const cv = document.createElement("canvas"); cv.width = 180; cv.height = 44; cv.dataset.col = String(j); f.appendChild(cv);
      filters.appendChild(f);
    });
    if (cols.length) sort.value = "0";
    for (const id of ["sort", "dir", "pagesize"]) $(id).addEventListener("change", () => { page = 0; update(); });
    for (const id of ["limit", "tagq"]) $(id).addEventListener("input", later);
    $("reset").addEventListener("click", () => {
      for (const i of filters.querySelectorAll("input")) i.value = "";
      $("limit").value = ""; $("tagq").value = ""; page = 0; update();
    });
    $("prev").addEventListener("click", () => { if (page > 0) { page--; render(); } });
    $("next").addEventListener("click", () => { if ((page + 1) * pageSize() < R.order.length) { page++; render(); } });
    $("detail").addEventListener("click", (e) => { if (e.target.tagName !== "A") $("detail").hidden = true; });
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("detail").hidden = true; });
  }

  let timer = null;
  function later() {
    if (timer) clearTimeout(timer); else R.pending++;
    timer = setTimeout(() => { timer = null; R.pending--; page = 0; update(); }, 120);
  }
  const pageSize = () => parseInt($("pagesize").value, 10);

  function bounds() {
    const out = [];
    for (const i of $("filters").querySelectorAll("input")) {
      if (i.value.trim() === "") continue;
      const v = Number(i.value);
      if (!Number.isFinite(v)) continue;
      out.push({ col: vals[+i.dataset.col], min: "min" in i.dataset, v: v });
    }
    return out;
  }

  // the rows shown, in order: what `cityclf query` with the same --min/--max/--sort-by/--top gives
  function select() {
    const bs = bounds(), q = $("tagq").value.trim().toLowerCase();
    if (q && !tagsLow) tagsLow = tags.map((t) => (t || "").toLowerCase());
    const keep = new Uint8Array(n).fill(1);
    for (const b of bs) {
      const c = b.col, v = b.v;
      if (b.min) { for (let i = 0; i < n; i++) if (!(c[i] >= v)) keep[i] = 0; }
      else { for (let i = 0; i < n; i++) if (!(c[i] <= v)) keep[i] = 0; }
    }
    const sortCol = $("sort").value === "" ? null : vals[+$("sort").value];
    if (sortCol) for (let i = 0; i < n; i++) if (Number.isNaN(sortCol[i])) keep[i] = 0;
    if (q) for (let i = 0; i < n; i++) if (keep[i] && tagsLow[i].indexOf(q) < 0) keep[i] = 0;
    let count = 0;
    for (let i = 0; i < n; i++) count += keep[i];
    let idx = new Int32Array(count);
    for (let i = 0, k = 0; i < n; i++) if (keep[i]) idx[k++] = i;
    if (sortCol) {
      const c = sortCol;
      idx.sort($("dir").value === "asc" ? (a, b) => (c[a] - c[b]) || (a - b) : (a, b) => (c[b] - c[a]) || (a - b));
    }
    const limit = parseInt($("limit").value, 10);
    if (limit > 0 && limit < idx.length) idx = idx.slice(0, limit);
    return idx;
  }

  function update() {
    const t0 = performance.now();
    R.order = select();
    histograms();
    render();
    R.lastUpdateMs = performance.now() - t0;
  }

  const fmt = (v) => Number.isNaN(v) ? "-" : v.toFixed(3);
  const short = (h) => h.replace(/-v[0-9][0-9.]*$/, "");

  function render() {
    const grid = $("grid"), ps = pageSize(), order = R.order;
    const from = page * ps, to = Math.min(order.length, from + ps);
    const main = $("sort").value === "" ? 0 : +$("sort").value;
    const frag = document.createDocumentFragment();
    for (let k = from; k < to; k++) {
      const i = order[k];
      const t = document.createElement("div"); t.className = "tile"; t.dataset.path = path[i]; t.dataset.row = String(i);
      const pic = document.createElement("div"); pic.className = "pic";
      if (thumb[i]) { const img = document.createElement("img"); img.loading = "lazy"; img.src = thumb[i]; img.alt = name[i]; pic.appendChild(img); }
      else pic.textContent = "no thumbnail";
      t.appendChild(pic);
      const cap = document.createElement("div"); cap.className = "cap";
      const line = (cls, text) => { const d = document.createElement("div"); d.className = cls; d.textContent = text; d.title = text; cap.appendChild(d); };
      if (cols.length) line("main", cols[main].key.replace(/-v[0-9][0-9.]*/, "") + " " + fmt(vals[main][i]));
      for (const h of R.m.heads) {
        const j = cols.findIndex((c) => c.key === h.name);
        line("head", short(h.name) + ": " + (labels[h.name][i] ?? "-") + (j === main ? "" : " · " + fmt(vals[j][i])));
      }
      if (tags[i]) line("tags", tags[i]);
      line("file", name[i]);
      t.appendChild(cap);
      t.addEventListener("click", () => detail(i));
      frag.appendChild(t);
    }
    grid.replaceChildren(frag);
    const pages = Math.max(1, Math.ceil(order.length / ps));
    $("pageinfo").textContent = order.length ? ` rows ${from + 1}-${to} of ${order.length} (page ${page + 1} of ${pages}) ` : " no rows match ";
    $("status").textContent = `${order.length} of ${n} images shown`;
    R.renders++;
  }

  function histograms() {
    const order = R.order, bins = 36;
    for (const cv of $("filters").querySelectorAll("canvas")) {
      const c = vals[+cv.dataset.col];
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < n; i++) { const v = c[i]; if (v < lo) lo = v; if (v > hi) hi = v; }
      const g = cv.getContext("2d"); g.clearRect(0, 0, cv.width, cv.height);
      if (!(hi >= lo)) continue;
      const w = hi > lo ? hi - lo : 1, all = new Float64Array(bins), shown = new Float64Array(bins);
      const bin = (v) => Math.min(bins - 1, Math.floor((v - lo) / w * bins));
      for (let i = 0; i < n; i++) if (!Number.isNaN(c[i])) all[bin(c[i])]++;
      for (let k = 0; k < order.length; k++) { const v = c[order[k]]; if (!Number.isNaN(v)) shown[bin(v)]++; }
      const top = Math.max(...all) || 1, bw = cv.width / bins, h = cv.height - 10;
      for (let b = 0; b < bins; b++) {
        g.fillStyle = "#44444c"; g.fillRect(b * bw, h - all[b] / top * h, bw - 1, all[b] / top * h);
        g.fillStyle = "#569cd6"; g.fillRect(b * bw, h - shown[b] / top * h, bw - 1, shown[b] / top * h);
      }
      g.fillStyle = "#9a9aa6"; g.font = "9px sans-serif";
      g.fillText(lo.toFixed(2), 0, cv.height - 1);
      const t = hi.toFixed(2); g.fillText(t, cv.width - g.measureText(t).width, cv.height - 1);
    }
  }

  function detail(i) {
    const big = $("bigimg");
    big.onerror = () => { if (thumb[i] && big.src.indexOf(thumb[i]) < 0) big.src = thumb[i]; };
    big.src = href[i];
    const info = $("info"); info.replaceChildren();
    const p = document.createElement("div"); p.className = "path"; p.textContent = path[i]; info.appendChild(p);
    const a = document.createElement("a"); a.href = href[i]; a.textContent = "open the original"; a.target = "_blank"; info.appendChild(a);
    const table = document.createElement("table");
    const row = (k, v) => { const tr = table.insertRow(); tr.insertCell().textContent = k; const c = tr.insertCell(); c.className = "v"; c.textContent = v; };
    for (const h of R.m.heads) row(h.name, labels[h.name][i] ?? "-");
    cols.forEach((c, j) => row(c.label === null ? c.key + " score" : "  P(" + c.label + ")", Number.isNaN(vals[j][i]) ? "-" : String(vals[j][i])));
    info.appendChild(table);
    if (tags[i]) { const t = document.createElement("p"); t.textContent = "tags: " + tags[i]; info.appendChild(t); }
    $("detail").hidden = false;
  }

  R.start = start;
  R.update = update;
  R.shownPaths = () => Array.from(R.order, (i) => path[i]);
  return R;
})();
</script>
<script src="data/meta.js"></script>
<script>cityclfReport.start();</script>
</body></html>
"""
