"use strict";
// meshtune's page: reads the agent's JSON endpoints every few seconds and
// draws them. Every figure comes from the agent as served; the page computes
// nothing the API does not already say (the objective's verdict included).
// Problems are shown on the page, not only in the console.

const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(1000, Number(params.get("refresh_ms")) || 5000);
const HISTORY_MINUTES = Math.max(5, Number(params.get("minutes")) || 60);
const charts = new Map(); // "chain/kind" -> uPlot

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

const num = (v, digits = 1) => (v == null || Number.isNaN(Number(v)) ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v == null ? "–" : `${(100 * v).toFixed(1)} %`);
const when = (s) => new Date(s * 1000).toISOString().replace("T", " ").slice(0, 19);
const serviceOf = (host) => String(host || "").split(".")[0];
const short = (v) => (v == null ? "unset" : typeof v === "string" ? v : JSON.stringify(v));

// The leaves of a value by path (`http[0].timeout`), to show only what
// differs inside a changed list or object.
function leaves(v, path = "", out = new Map()) {
  if (Array.isArray(v)) v.forEach((x, i) => leaves(x, `${path}[${i}]`, out));
  else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) leaves(x, path ? `${path}.${k}` : k, out);
  else out.set(path, v);
  return out;
}

// `old → new`, leaf by leaf where both are structured.
function change_text(old, now) {
  if (old == null || now == null || typeof old !== "object" || typeof now !== "object") return `${short(old)} → ${short(now)}`;
  const a = leaves(old), b = leaves(now);
  const keys = [...new Set([...a.keys(), ...b.keys()])].filter((k) => a.get(k) !== b.get(k));
  return keys.map((k) => `${k}: ${short(a.get(k))} → ${short(b.get(k))}`).join("; ") || "no change";
}

function figure(label, value, attrs = {}) {
  return el("div", { class: "figure" }, el("b", { ...attrs, text: value }), el("span", { text: label }));
}

function section(chain) {
  let s = document.querySelector(`section[data-chain="${CSS.escape(chain)}"]`);
  if (s) return s;
  s = el("section", { class: "chain", "data-chain": chain },
    el("h2", { text: chain }),
    el("div", { class: "objective muted" }),
    el("div", { class: "figures" }),
    el("div", { class: "charts" }, el("div", { class: "chart-rps" }), el("div", { class: "chart-p99" }),
      el("div", { class: "chart-attainment" })),
    el("h3", { text: "Hops" }), el("div", { class: "hops" }),
    el("h3", { text: "Configuration per service (live → meshtune's)" }), el("div", { class: "config" }),
    el("h3", { text: "Decisions on this chain" }), el("div", { class: "decisions" }));
  document.getElementById("chains").append(s);
  return s;
}

// One time-series chart per chain and kind, created once and fed new data.
function draw(chain, kind, target, opts, data) {
  const key = `${chain}/${kind}`;
  const width = Math.max(360, target.clientWidth || 560);
  let u = charts.get(key);
  if (!u) {
    u = new uPlot({ width, height: 220, scales: { x: { time: true } }, ...opts }, data, target);
    charts.set(key, u);
  } else {
    u.setData(data);
    if (Math.abs(u.width - width) > 20) u.setSize({ width, height: 220 });
  }
}

function charts_of(c, history, s) {
  // The minute still running is left out: its count is not whole yet.
  const pts = (history.points || []).filter((p) => !p.partial);
  const xs = pts.map((p) => p.minute_start);
  const rps = pts.map((p) => p.rps);
  const p99 = pts.map((p) => p.p99_ms);
  const within = pts.map((p) => (p.slo_attainment == null ? null : 100 * p.slo_attainment));
  // The forecast ahead, from the last minute of history (horizons in minutes).
  const fx = [], fy = [];
  const last = xs.length ? xs[xs.length - 1] : null;
  if (last != null && c.forecast && c.forecast.rps) {
    for (const [h, v] of Object.entries(c.forecast.rps)) { fx.push(last + 60 * Number(h)); fy.push(v); }
  }
  const allX = xs.concat(fx);
  const actual = rps.concat(fx.map(() => null));
  const ahead = xs.map((_, i) => (i === xs.length - 1 ? rps[i] : null)).concat(fy);
  draw(c.chain, "rps", s.querySelector(".chart-rps"), {
    title: "Requests per second, and the forecast ahead",
    series: [{}, { label: "rps", stroke: "#0969da", width: 2 },
      { label: `forecast (${c.forecast ? c.forecast.method : "none yet"})`, stroke: "#8250df", dash: [6, 4], spanGaps: true }],
  }, [allX, actual, ahead]);
  draw(c.chain, "p99", s.querySelector(".chart-p99"), {
    title: `p99 end to end (ms) against the objective`,
    series: [{}, { label: "p99 ms", stroke: "#bf3989", width: 2 },
      { label: `objective ${num(c.slo_ms, 0)} ms`, stroke: "#cf222e", dash: [2, 3] }],
  }, [xs, p99, xs.map(() => c.slo_ms ?? null)]);
  draw(c.chain, "attainment", s.querySelector(".chart-attainment"), {
    title: "Requests within the objective (%) per minute",
    scales: { x: { time: true }, y: { range: (u, lo) => [Math.min(lo ?? 100, c.slo_percentile ?? 99) - 1, 100] } },
    series: [{}, { label: "within %", stroke: "#1a7f37", width: 2 },
      { label: `needed ${num(c.slo_percentile, 0)} %`, stroke: "#cf222e", dash: [2, 3] }],
  }, [xs, within, xs.map(() => c.slo_percentile ?? null)]);
}

function hops_of(c) {
  const rows = (c.hops || []).map((h) => el("tr", {},
    el("td", { text: h.service }), el("td", { text: h.direction }),
    el("td", { class: "num", text: num(h.rps) }), el("td", { class: "num", text: num(h.p50_ms) }),
    el("td", { class: "num", text: num(h.p99_ms) }), el("td", { class: "num", text: pct(h.error_rate) }),
    el("td", { class: "num", text: String(h.shed ?? 0) })));
  return el("table", {}, el("tr", {}, ...["service", "side", "rps", "p50 ms", "p99 ms", "errors", "shed"]
    .map((t, i) => el("th", { class: i > 1 ? "num" : null, text: t }))), ...rows);
}

// The reasons the planner gave for a changed field (a changed list, such as
// a route's `http`, carries the reasons of every field inside it).
function reasons_for(reasons, path) {
  const p = path.replace(/^\.spec\./, "");
  return Object.entries(reasons || {}).filter(([k]) => k === p || k.startsWith(p + ".") || k.startsWith(p + "["))
    .map(([k, r]) => `${k}: ${r}`).join("; ");
}

function config_of(services, report) {
  const objects = Object.entries((report && report.objects) || {})
    .filter(([, o]) => services.has(serviceOf(o.host)));
  if (!objects.length) return el("p", { class: "muted", text: "meshtune holds no object for these services yet." });
  return el("table", { class: "wide" }, el("tr", {}, el("th", { text: "object" }), el("th", { text: "field" }),
    el("th", { text: "live → meshtune's" }), el("th", { text: "reason" })),
  ...objects.flatMap(([name, o]) => {
    const changes = o.changes || [];
    if (!changes.length) return [el("tr", {}, el("td", { text: name }), el("td", { text: "all" }),
      el("td", { text: "in force as meshtune wants it" }), el("td", {}))];
    return changes.map((ch) => el("tr", {}, el("td", { text: name }), el("td", {}, el("code", { text: ch.path })),
      el("td", { text: change_text(ch.live, ch.desired) }),
      el("td", { text: reasons_for(o.reasons, ch.path) })));
  }));
}

function decisions_of(chain, services, decisions) {
  // Changes to the chain's services, and decisions about the chain itself
  // (its data-path policy, the assurance loop's re-plans), judged by it.
  const mine = decisions.filter((d) => services.has(serviceOf(d.host)) || d.host === `chain ${chain}`);
  if (!mine.length) return el("p", { class: "muted", text: "No decision on this chain's services yet." });
  return el("table", { class: "wide" }, el("tr", {}, ...["time", "mode", "object", "field", "old → new", "measured", "reason"]
    .map((t) => el("th", { text: t }))),
  ...mine.slice(0, 12).map((d) => el("tr", {},
    el("td", { text: when(d.at_s) }), el("td", { text: d.mode }), el("td", { text: d.object }),
    el("td", {}, el("code", { text: d.field })), el("td", { text: change_text(d.old, d.new) }),
    el("td", { text: d.measured ? `${d.measured.effect} (${pct(d.measured.attainment_after)})` : "pending" }),
    el("td", { text: d.reason }))));
}

function render_chain(c, history, decisions, report) {
  const s = section(c.chain);
  s.classList.toggle("met", c.objective_met === true);
  s.classList.toggle("breached", c.objective_met === false);
  s.querySelector(".objective").textContent =
    `objective: p${num(c.slo_percentile, 0)} ≤ ${num(c.slo_ms, 0)} ms` +
    (c.deadline_ms != null ? ` · deadline ${num(c.deadline_ms, 0)} ms` : "") +
    ` · window ${c.window_requests} requests`;
  const verdict = c.objective_met == null ? "no traffic" : c.objective_met ? "met" : "breached";
  s.querySelector(".figures").replaceChildren(
    figure("requests per second", num(c.rps), { class: "rps", "data-rps": String(c.rps) }),
    figure("p99 ms", num(c.p99_ms)),
    figure("within objective", pct(c.slo_attainment)),
    figure("errors", pct(c.error_rate)),
    figure("objective", verdict, { class: `verdict ${c.objective_met ? "met" : "breached"}` }));
  const services = new Set((c.hops || []).map((h) => h.service));
  charts_of(c, history, s);
  s.querySelector(".hops").replaceChildren(hops_of(c));
  s.querySelector(".config").replaceChildren(config_of(services, report));
  s.querySelector(".decisions").replaceChildren(decisions_of(c.chain, services, decisions));
}

function render_header(report) {
  const mode = document.getElementById("mode");
  mode.textContent = `mode: ${report.mode || "unknown"}`;
  mode.className = `badge ${report.mode || ""}`;
  const model = report.config_model;
  document.getElementById("model").textContent = !model ? "" :
    model.in_use ? "configuration model in use" : `rules decide${model.error ? ` (model: ${model.error})` : ""}`;
  document.getElementById("sink").textContent = report.sink ? `writes to ${report.sink}` : "";
}

async function refresh() {
  const problem = document.getElementById("problem");
  try {
    const [chains, report, log] = await Promise.all([
      getJSON("/v1/chains"), getJSON("/v1/recommendations"), getJSON("/v1/decisions?limit=200")]);
    const histories = await Promise.all(chains.chains.map((c) =>
      getJSON(`/v1/chains/${encodeURIComponent(c.chain)}/history?minutes=${HISTORY_MINUTES}`)));
    render_header(report);
    document.getElementById("empty").hidden = chains.chains.length > 0;
    chains.chains.forEach((c, i) => render_chain(c, histories[i], log.decisions || [], report));
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    problem.hidden = true;
  } catch (e) {
    problem.textContent = `Could not read the agent: ${e.message}`;
    problem.hidden = false;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
