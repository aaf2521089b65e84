// dyn's dashboard: polls /admin/dashboard/data every second and draws what it says.
// No framework and no build step: the server computes every figure (rates, percentiles),
// this script only keeps a rolling window of points per chart and draws them on <canvas>.
// Each chart element carries data-points (points held) and data-last (its first series'
// newest value), so a test, or a curious reader, can see what is drawn without pixels.
"use strict";

const POLL_MS = 1000;
const KEEP = 120; // points per chart: two minutes at one a second
const SPAN_MIN = 30; // the x axis spans at least this many points, growing up to KEEP
const COLORS = ["#3f6fd8", "#e08a1e", "#c0392b"];

function chart(id, series, scale, ceiling) {
  const element = document.getElementById(id);
  return { element, canvas: element.querySelector("canvas"), series, scale, ceiling, points: [] };
}

const charts = {
  rps: chart("chart-rps", ["requests/s"], 1),
  ttft: chart("chart-ttft", ["p50", "p90", "p99"], 1000),
  itl: chart("chart-itl", ["p50", "p90", "p99"], 1000),
  hit: chart("chart-hit", ["hit rate"], 100, 100),
  disagg: chart("chart-disagg", ["queue", "remote/s", "local/s"], 1),
};

function push(c, values) {
  const scaled = values.map((v) => (typeof v === "number" && isFinite(v) ? v * c.scale : null));
  c.points.push(scaled);
  if (c.points.length > KEEP) c.points.shift();
  // Points with something to draw: a poll whose figures are all unknown adds none.
  const drawn = c.points.filter((point) => point.some((v) => v !== null)).length;
  c.element.dataset.points = String(drawn);
  c.element.dataset.last = scaled[0] === null ? "" : String(scaled[0]);
  const now = c.element.querySelector(".now");
  now.replaceChildren();
  scaled.forEach((v, i) => {
    const label = document.createElement("span");
    label.style.color = COLORS[i % COLORS.length];
    label.textContent = ` ${c.series[i]} ${fmt(v)} `;
    now.appendChild(label);
  });
  draw(c);
}

function fmt(v) {
  if (v === null) return "–";
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function draw(c) {
  const canvas = c.canvas;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 42, bottom = height - 16, top = 6, right = width - 6;
  let max = 0;
  for (const p of c.points) for (const v of p) if (v !== null && v > max) max = v;
  max = max > 0 ? max * 1.1 : 1;
  if (c.ceiling) max = Math.min(max, c.ceiling);
  g.strokeStyle = "#e3e6ee";
  g.fillStyle = "#6b7385";
  g.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 2; i++) {
    const y = bottom - ((bottom - top) * i) / 2;
    g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
    g.fillText(fmt((max * i) / 2), 2, y + 4);
  }
  const n = c.points.length;
  const span = Math.max(SPAN_MIN, n);
  g.fillText(`−${span} s`, left, height - 2);
  g.fillText("now", right - 22, height - 2);
  const x = (i) => right - ((n - 1 - i) * (right - left)) / (span - 1);
  const y = (v) => bottom - (v / max) * (bottom - top);
  c.series.forEach((_, s) => {
    g.strokeStyle = COLORS[s % COLORS.length];
    g.lineWidth = 1.6;
    g.beginPath();
    let drawing = false;
    c.points.forEach((p, i) => {
      const v = p[s];
      if (v === null) { drawing = false; return; }
      if (drawing) g.lineTo(x(i), y(v)); else g.moveTo(x(i), y(v));
      drawing = true;
    });
    g.stroke();
  });
}

function cell(row, text) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  row.appendChild(td);
}

function bar(share) {
  const span = document.createElement("span");
  const outer = document.createElement("span");
  outer.className = "bar";
  const inner = document.createElement("i");
  inner.style.width = `${Math.max(0, Math.min(1, share || 0)) * 100}%`;
  outer.appendChild(inner);
  span.appendChild(outer);
  span.appendChild(document.createTextNode(share === null ? "–" : `${(share * 100).toFixed(1)}%`));
  return span;
}

function showWorkers(workers) {
  const body = document.querySelector("#workers tbody");
  const most = Math.max(1, ...workers.map((w) => w.in_flight || 0));
  body.replaceChildren();
  for (const w of workers) {
    const row = document.createElement("tr");
    row.dataset.worker = w.worker;
    cell(row, w.role || "–");
    cell(row, w.worker);
    cell(row, w.node || "–");
    const flight = bar(w.in_flight === null ? null : (w.in_flight || 0) / most);
    flight.lastChild.textContent = w.in_flight === null ? "–" : String(w.in_flight);
    cell(row, flight);
    cell(row, bar(w.kv_usage));
    cell(row, w.routed_per_s === null || w.routed_per_s === undefined ? "–" : fmt(w.routed_per_s));
    cell(row, w.prefix_hit_rate == null ? "–" : `${(w.prefix_hit_rate * 100).toFixed(1)}%`);
    body.appendChild(row);
  }
}

function showDecisions(decisions) {
  const panel = document.getElementById("decisions");
  panel.replaceChildren();
  for (const d of decisions) {
    const item = document.createElement("div");
    item.className = "decision";
    item.dataset.worker = d.worker;
    const when = new Date(d.time * 1000).toLocaleTimeString();
    const head = document.createElement("div");
    head.append(`${when}  ${d.strategy}  `);
    const code = document.createElement("code");
    code.textContent = d.request_id;
    head.append(code, " → ");
    const chosen = document.createElement("span");
    chosen.className = "chosen";
    chosen.textContent = d.worker;
    head.append(chosen);
    item.appendChild(head);
    if (d.scores) {
      const scores = document.createElement("div");
      scores.className = "scores";
      for (const s of d.scores) {
        const b = document.createElement(s.worker === d.worker ? "b" : "span");
        const cost = typeof s.cost === "number" ? s.cost.toFixed(2) : "–";
        b.textContent = `${s.worker}: overlap ${s.overlap_blocks}, cost ${cost}`;
        scores.append(b, "   ");
      }
      item.appendChild(scores);
    }
    panel.appendChild(item);
  }
}

function show(data) {
  document.getElementById("namespace").textContent = `namespace ${data.namespace}`;
  document.getElementById("strategy").textContent = data.strategy ? `strategy ${data.strategy}` : "";
  const p = (h) => [h.p50, h.p90, h.p99];
  const prefills = data.prefills_per_s || {};
  push(charts.rps, [data.requests_per_s]);
  push(charts.ttft, p(data.ttft_s));
  push(charts.itl, p(data.itl_s));
  push(charts.hit, [data.prefix_hit_rate]);
  // A graph without disaggregation has no queue and counts no prefills: no chart for it.
  const disaggregated = data.queue_depth !== null || Object.keys(data.prefills_total || {}).length > 0;
  charts.disagg.element.hidden = !disaggregated;
  push(charts.disagg, [data.queue_depth, prefills.remote ?? null, prefills.local ?? null]);
  showWorkers(data.workers);
  showDecisions(data.decisions);
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/admin/dashboard/data", { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json();
      status.textContent = body.error ? body.error.message : `refused (${response.status})`;
      status.className = "status error";
    } else if (!response.ok) {
      status.textContent = `data answered ${response.status}`;
      status.className = "status error";
    } else {
      show(await response.json());
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
      status.className = "status";
    }
  } catch (error) {
    status.textContent = `cannot reach the frontend: ${error}`;
    status.className = "status error";
  }
  setTimeout(poll, POLL_MS);
}

poll();
