// The dashboard at `/` (docs/browser.md, "The dashboard"). Built on the JavaScript client
// the broker serves at /rewind.js; no framework, no build step. Everything the broker sends
// is put on the page as text (textContent), never as HTML.
//
// The namespace table polls `GET /v1/namespaces` every second (POLL_MS): the event rate of
// a namespace is the growth of its `next` between two polls, over the time between them,
// and the sparkline shows the last SAMPLES rates. The live tail is a subscription of the
// client; "Pause" holds the event handler, so the client grants the broker no more credit
// and the broker keeps only the tail's position until "Resume".

import { connect } from "/rewind.js";

const POLL_MS = 1000;
const SAMPLES = 60;
const MAX_ROWS = 500; // tail rows kept on the page; older ones are dropped from view
const HEX_BYTES = 32; // bytes of a byte payload shown in hex

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// A token for a broker that checks them, from `#token=…`. The fragment is not sent with
// the page's own request, but the token then goes out as `Authorization` on fetches and
// as `?token=` on the WebSocket, which a proxy may log (docs/browser.md). Once read, it is
// cleared from the address bar and the history entry, so it is not bookmarked or shared.
const token = new URLSearchParams(location.hash.slice(1)).get("token") || null;
if (token) window.history.replaceState(window.history.state, "", location.pathname + location.search);

/** `n` bytes for people: 1.2 MiB. */
function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** Seconds for people: 7 d, 3 h, 90 s. */
function age(s) {
  for (const [unit, len] of [["d", 86400], ["h", 3600], ["min", 60]]) {
    if (s >= len && s % len === 0) return `${s / len} ${unit}`;
  }
  return `${s} s`;
}

/** The retention in force, as the API gives it (null: no limit). */
function retention(r) {
  if (!r) return "—";
  const parts = [];
  if (r.max_age_secs != null) parts.push(`≤ ${age(r.max_age_secs)}`);
  if (r.max_events != null) parts.push(`≤ ${r.max_events} events`);
  if (r.max_bytes != null) parts.push(`≤ ${size(r.max_bytes)}`);
  return parts.length ? parts.join(" · ") : "keep all";
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

const SVG = "http://www.w3.org/2000/svg";

/**
 * A sparkline of `values` (an SVG polyline over the box's width, scaled to the largest
 * value): the samples so far, up to the last SAMPLES.
 */
function sparkline(values) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  const width = Math.max(1, values.length - 1);
  svg.setAttribute("viewBox", `0 0 ${width} 20`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...values);
  const points = values.map((v, i) => `${i},${(20 - (v / max) * 18 - 1).toFixed(2)}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(line);
  const title = document.createElementNS(SVG, "title");
  title.textContent = `${(values.at(-1) ?? 0).toFixed(1)} events/s now, ${max.toFixed(1)} at most`;
  svg.append(title);
  return svg;
}

// ---- the namespace table -------------------------------------------------------------

const history = new Map(); // name -> {next, at, rates: number[]}

async function pollNamespaces() {
  try {
    const res = await fetch("/v1/namespaces", token ? { headers: { authorization: `Bearer ${token}` } } : {});
    const body = await res.json();
    if (!res.ok) throw new Error(body?.error?.message ?? res.status);
    showNamespaces(body.namespaces, performance.now());
    $("ns-error").hidden = true;
  } catch (e) {
    $("ns-error").textContent = `Cannot list namespaces: ${e.message}`;
    $("ns-error").hidden = false;
  }
  setTimeout(pollNamespaces, POLL_MS);
}

function showNamespaces(list, now) {
  const tbody = $("ns-table").querySelector("tbody");
  const names = $("ns-names");
  tbody.replaceChildren();
  names.replaceChildren();
  const seen = new Set();
  for (const ns of list) {
    seen.add(ns.name);
    let h = history.get(ns.name);
    if (!h || h.epoch !== ns.epoch) {
      h = { next: ns.next, at: now, rates: [], epoch: ns.epoch };
      history.set(ns.name, h);
    } else if (now > h.at) {
      h.rates.push(Math.max(0, ns.next - h.next) / ((now - h.at) / 1000));
      if (h.rates.length > SAMPLES) h.rates.shift();
      h.next = ns.next;
      h.at = now;
    }
    const tr = el("tr", { "data-ns": ns.name });
    tr.append(
      el("td", {}, ns.name),
      el("td", { class: "num" }, ns.earliest),
      el("td", { class: "num" }, ns.next),
      el("td", { class: "num" }, ns.events),
      el("td", { class: "num" }, size(ns.bytes)),
      el("td", {}, retention(ns.retention)),
    );
    const rate = el("td", { class: "rate" });
    rate.append(sparkline(h.rates), ` ${(h.rates.at(-1) ?? 0).toFixed(1)}`);
    const act = el("td");
    const tail = el("button", { type: "button" }, "Tail");
    tail.addEventListener("click", () => {
      $("tail-ns").value = ns.name;
      follow();
    });
    act.append(tail);
    tr.append(rate, act);
    tbody.append(tr);
    names.append(el("option", { value: ns.name }));
  }
  for (const name of history.keys()) if (!seen.has(name)) history.delete(name);
  $("ns-empty").hidden = list.length > 0;
  $("ns-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// ---- the live tail -------------------------------------------------------------------

let client = null;
let sub = null;
let paused = null; // {promise, resume} while paused

function hex(bytes) {
  const shown = Array.from(bytes.subarray(0, HEX_BYTES), (b) => b.toString(16).padStart(2, "0"));
  return shown.join(" ") + (bytes.length > HEX_BYTES ? " …" : "");
}

function pretty(data) {
  return JSON.stringify(data, null, 2);
}

function matches(row) {
  const f = $("tail-filter").value.trim();
  return f === "" || row.dataset.event.includes(f);
}

function addRow(row) {
  row.hidden = !matches(row);
  const list = $("tail-list");
  list.prepend(row);
  while (list.children.length > MAX_ROWS) list.lastChild.remove();
}

function eventRow(ev) {
  const li = el("li", { "data-offset": ev.offset });
  li.dataset.event = ev.event;
  const meta = el("div", { class: "meta" });
  meta.append(
    el("span", { class: "offset" }, `#${ev.offset}`),
    el("span", { class: "name" }, ev.event),
    el("time", {}, new Date(ev.ts).toISOString()),
  );
  if (ev.key !== undefined) meta.append(el("span", { class: "key" }, `key ${ev.key}`));
  li.append(meta);
  if (ev.data instanceof Uint8Array) {
    meta.append(el("span", { class: "bytes" }, `${size(ev.data.length)} of bytes`));
    li.append(el("pre", { class: "hex" }, hex(ev.data)));
  } else {
    li.append(el("pre", { class: "json" }, pretty(ev.data)));
  }
  return li;
}

function notice(text) {
  const li = el("li", { class: "notice" }, text);
  li.dataset.event = "";
  addRow(li);
}

function status(text) {
  $("tail-status").textContent = text;
}

function position() {
  const from = $("tail-from").value;
  if (from !== "offset") return from;
  const n = Number($("tail-offset").value);
  return Number.isSafeInteger(n) && n >= 0 ? n : 0;
}

function follow() {
  const ns = $("tail-ns").value.trim();
  if (!ns || !client) return;
  if (sub) sub.close();
  if (paused) togglePause();
  $("tail-list").replaceChildren();
  const from = position();
  status(`Following ${ns} from ${from}.`);
  $("tail-pause").disabled = false;
  const mine = client.subscribe(ns, { from }, {
    onEvent: async (ev) => {
      if (paused) await paused.promise;
      if (sub !== mine) return; // a tail replaced while it was paused
      addRow(eventRow(ev));
      status(`Following ${ns}: last offset ${ev.offset}.`);
    },
    onTruncated: ({ requested, from: at, reason }) =>
      notice(`Offsets from ${requested} to ${at - 1} are gone (${reason}); going on at ${at}.`),
    onGap: ({ from: a, to, reason }) => notice(`Offsets ${a} to ${to - 1} were not delivered (${reason}).`),
    onEpoch: (epoch) => notice(`Epoch ${epoch}.`),
    onEnded: ({ reason }) => {
      notice(`The subscription ended: ${reason}.`);
      status(`Not following ${ns}: ${reason}.`);
      $("tail-pause").disabled = true;
    },
  });
  sub = mine;
}

function togglePause() {
  if (paused) {
    paused.resume();
    paused = null;
    $("tail-pause").textContent = "Pause";
  } else {
    let resume;
    const promise = new Promise((r) => (resume = r));
    paused = { promise, resume };
    $("tail-pause").textContent = "Resume";
  }
}

function showConnection({ state, transport }) {
  const s = $("conn-state");
  s.textContent = state;
  s.dataset.state = state;
  $("conn-transport").textContent = transport ?? "—";
}

async function main() {
  $("tail-form").addEventListener("submit", (e) => {
    e.preventDefault();
    follow();
  });
  $("tail-pause").addEventListener("click", togglePause);
  $("tail-from").addEventListener("change", () => {
    $("tail-offset-label").hidden = $("tail-from").value !== "offset";
  });
  $("tail-filter").addEventListener("input", () => {
    for (const row of $("tail-list").children) row.hidden = !matches(row);
  });
  pollNamespaces();
  const transport = params.get("transport") ?? "auto";
  client = await connect(location.origin, { transport, token });
  client.on("state", showConnection);
  showConnection({ state: client.state, transport: client.transport });
  const ns = params.get("ns");
  if (ns) {
    $("tail-ns").value = ns;
    const from = params.get("from");
    if (from === "earliest" || from === "latest") $("tail-from").value = from;
    else if (from !== null) {
      $("tail-from").value = "offset";
      $("tail-offset").value = from;
      $("tail-offset-label").hidden = false;
    }
    follow();
  }
}

main();
