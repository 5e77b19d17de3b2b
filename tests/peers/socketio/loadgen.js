// The Socket.IO load generator of rewind's benchmarks (socket.io-client, WebSocket
// transport), for the socket.io and socketioxide peers: the cases of
// `rewind bench fanout` (flood, paced) and `rewind bench idle`, one JSON object per case
// on stdout, in the shape of `rewind bench ... --json`.
//
// Usage: node loadgen.js --url http://127.0.0.1:PORT --case flood|paced|idle
//          [--subscribers N] [--seconds S] [--rate EVENTS_PER_S] [--payload-bytes B]
//          [--window W] [--connections N] [--server-pid PID] [--label NAME]
//
// Events carry the payload of rewind's load generator, `{"seq":N,"sent_us":T,"pad":"x…"}`,
// as a string; latency is from `sent_us` (this process's clock) to arrival. Flooding, the
// publisher keeps `--window` (64) acknowledged emits in flight; paced, it emits without
// acks at `--rate` per second. After the last emit, deliveries that have not arrived
// within 3 s of the last one are counted as lost.
"use strict";

const fs = require("node:fs");
const { performance } = require("node:perf_hooks");
const { io } = require("socket.io-client");

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
}
const url = args.url;
const kind = args.case || "paced";
const subscribers = Number(args.subscribers || 100);
const seconds = Number(args.seconds || 5);
const payloadBytes = Number(args["payload-bytes"] || 100);
const window = Number(args.window || 64);
const serverPid = args["server-pid"] ? Number(args["server-pid"]) : null;
const label = args.label || `Socket.IO server at ${url}`;
const SETTLE_MS = 3000;
const BOTTLENECK_CORES = 0.9;

const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

function payload(seq, sentUs) {
  const head = `{"seq":${seq},"sent_us":${sentUs},"pad":"`;
  return head + "x".repeat(Math.max(0, payloadBytes - head.length - 2)) + '"}';
}

// A log-linear histogram of microseconds, 1,024 linear steps per power of two (0.1 %).
class Histogram {
  constructor() {
    this.counts = new Float64Array(2048 + 32 * 1024);
    this.n = 0;
    this.max = 0;
  }
  record(v) {
    v = Math.max(1, Math.floor(v));
    let idx = v;
    if (v >= 2048) {
      const s = Math.floor(Math.log2(v)) - 10;
      idx = 2048 + (s - 1) * 1024 + (Math.floor(v / 2 ** s) - 1024);
    }
    this.counts[Math.min(idx, this.counts.length - 1)] += 1;
    this.n += 1;
    if (v > this.max) this.max = v;
  }
  quantile(q) {
    if (this.n === 0) return 0;
    const want = Math.max(1, Math.ceil(this.n * q));
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= want) {
        if (i < 2048) return i;
        const k = i - 2048;
        return ((k % 1024) + 1024) * 2 ** (Math.floor(k / 1024) + 1);
      }
    }
    return this.max;
  }
}

function procCpuSecs(pid) {
  if (pid === null) return null;
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function procRssKib(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const line = status.split("\n").find((l) => l.startsWith("VmRSS:"));
  return Number(line.replace(/[^0-9]/g, ""));
}

function ownCpuSecs() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function mark() {
  return { server: procCpuSecs(serverPid), own: ownCpuSecs(), at: performance.now() };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function connect(query) {
  return io(url, {
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    query,
  });
}

let delivered = 0;
const hist = new Histogram();

// Connects one subscriber; resolves once the server has said `ready` (it is in the room).
function subscribe(counting) {
  return new Promise((resolve, reject) => {
    const s = connect({ role: "sub" });
    s.once("ready", () => resolve(s));
    s.once("connect_error", reject);
    if (counting) {
      s.on("event", (data) => {
        delivered += 1;
        const at = typeof data === "string" ? data.indexOf('"sent_us":') : -1;
        if (at >= 0) hist.record(nowUs() - parseInt(data.slice(at + 10), 10));
      });
    }
  });
}

// Connects `n` subscribers, fifty handshakes at a time (one at a time, 10,000 take
// minutes in this client); resolves once every one is in the room.
async function subscribeAll(n, counting) {
  const open = [];
  while (open.length < n) {
    const batch = Math.min(50, n - open.length);
    open.push(...(await Promise.all(Array.from({ length: batch }, () => subscribe(counting)))));
  }
  return open;
}

function publisher() {
  return new Promise((resolve, reject) => {
    const p = connect({ role: "pub" });
    p.once("connect", () => resolve(p));
    p.once("connect_error", reject);
  });
}

async function settle(expected) {
  let last = delivered;
  let since = performance.now();
  while (delivered < expected && performance.now() - since < SETTLE_MS) {
    await sleep(5);
    if (delivered !== last) {
      last = delivered;
      since = performance.now();
    }
  }
}

function result(name, m0, m1, deliveries, rate, lost) {
  const secs = (m1.at - m0.at) / 1000;
  const own = (m1.own - m0.own) / secs;
  const out = {
    name,
    events_per_sec: rate,
    p50_us: hist.quantile(0.5),
    p99_us: hist.quantile(0.99),
    p999_us: hist.quantile(0.999),
    max_us: hist.max,
    lost,
    server_cpu_s_per_million:
      m0.server === null ? null : ((m1.server - m0.server) / Math.max(1, deliveries)) * 1e6,
    server_cores: m0.server === null ? null : (m1.server - m0.server) / secs,
    loadgen_cores: own,
    warning: null,
  };
  const warnings = [];
  if (own >= BOTTLENECK_CORES) {
    warnings.push(`the load generator used ${own.toFixed(2)} cores: it may be the bottleneck`);
  }
  if (lost > 0) warnings.push(`${lost} deliveries lost`);
  if (warnings.length) out.warning = warnings.join("; ");
  return out;
}

async function flood() {
  const subs = await subscribeAll(subscribers, true);
  const pub = await publisher();
  let seq = 0;
  let inflight = 0;
  let until = 0;
  let done = null;
  const pump = () => {
    while (inflight < window && performance.now() < until) {
      inflight += 1;
      pub.emit("pub", payload(seq++, nowUs()), () => {
        inflight -= 1;
        pump();
      });
    }
    if (inflight === 0 && performance.now() >= until && done) done();
  };
  const run = (ms) =>
    new Promise((resolve) => {
      until = performance.now() + ms;
      done = resolve;
      pump();
    });
  await run(1000);
  const d0 = delivered;
  const m0 = mark();
  await run(seconds * 1000);
  const d1 = delivered;
  const m1 = mark();
  await settle(seq * subscribers);
  const lost = Math.max(0, seq * subscribers - delivered);
  pub.close();
  subs.forEach((s) => s.close());
  const rate = (d1 - d0) / ((m1.at - m0.at) / 1000);
  return result(
    `fan-out flood, ${label}, 1 Socket.IO publisher (${window} acknowledged emits in flight) → ${subscribers} subscribers`,
    m0, m1, d1 - d0, rate, lost,
  );
}

async function paced() {
  const rate = Number(args.rate || 200);
  const subs = await subscribeAll(subscribers, true);
  const pub = await publisher();
  const m0 = mark();
  const end = m0.at + seconds * 1000;
  let seq = 0;
  await new Promise((resolve) => {
    const tick = setInterval(() => {
      const now = performance.now();
      const due = Math.min(Math.floor(((Math.min(now, end) - m0.at) / 1000) * rate) + 1, Math.ceil(seconds * rate));
      while (seq < due) pub.emit("pub", payload(seq++, nowUs()));
      if (now >= end) {
        clearInterval(tick);
        resolve();
      }
    }, 1);
  });
  await settle(seq * subscribers);
  const m1 = mark();
  const lost = Math.max(0, seq * subscribers - delivered);
  pub.close();
  subs.forEach((s) => s.close());
  return result(
    `fan-out paced, ${label}, ${seq} emits at ${rate}/s → ${subscribers} subscribers`,
    m0, m1, delivered, delivered / seconds, lost,
  );
}

async function idle() {
  const n = Number(args.connections || 10000);
  const first = await subscribe(false);
  const before = procRssKib(serverPid);
  const open = await subscribeAll(n, false);
  const after = procRssKib(serverPid);
  open.forEach((s) => s.close());
  first.close();
  const per = (after - before) / n;
  return {
    name: `idle WebSocket connections, ${label}: ${n} connections, server RSS ${before} → ${after} KiB, ${per.toFixed(2)} KiB each`,
    events_per_sec: 0, p50_us: 0, p99_us: 0, p999_us: 0, max_us: 0, lost: null,
    server_cpu_s_per_million: null, server_cores: null, loadgen_cores: null, warning: null,
    kib_per_connection: per,
  };
}

const cases = { flood, paced, idle };
if (!url || !cases[kind]) {
  console.error("usage: node loadgen.js --url URL --case flood|paced|idle [options]");
  process.exit(2);
}
cases[kind]().then(
  (out) => {
    console.log(JSON.stringify(out));
    process.exit(0);
  },
  (e) => {
    console.error(`loadgen: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
