// rewind.js — the browser (and Node ≥ 20) client of the rewind broker.
//
// One dependency-free ES module. `connect(url, options)` gives a Client that carries any
// number of subscriptions and publishes over one WebSocket (`rewind.v1.json`, see
// docs/protocol.md), reconnects with exponential backoff and jitter, resumes every
// subscription by offset and epoch, drops duplicates by offset, reports gaps, grants the
// broker credit as the application's (possibly async) handlers finish, and falls back to
// long-polling `GET /v1/namespaces/{ns}/events?from=&wait=` when a WebSocket cannot be
// opened or is cut again and again, going back to the WebSocket as soon as one opens.
// The guide is docs/browser.md; the declarations are rewind.d.ts.

/** The default options (docs/browser.md, "Options"). */
export const DEFAULTS = Object.freeze({
  transport: "auto", // "auto" | "websocket" | "longpoll"
  backoffMin: 100, // ms, the first wait before reconnecting (the Rust client's figure)
  backoffMax: 10000, // ms, the longest wait
  liveness: 45000, // ms of silence that count as a dead link: the broker's ping interval + timeout
  openTimeout: 10000, // ms a WebSocket may take to open before it counts as failed
  buffer: 256, // events per subscription the broker may send ahead of the handlers (credit)
  fallbackAfter: 2, // WebSocket failures in a row before switching to long-polling
  stableAfter: 3000, // ms a WebSocket must stay up to count as working
  probeMin: 1000, // ms, the first wait before trying the WebSocket again from long-poll
  probeMax: 30000, // ms, the longest such wait
  pollWait: 25, // s a long-poll is held by the broker (at most its max_wait_secs, 60)
  pollLimit: 100, // events per long-poll page
  pollHeld: 4, // long-polls held at once; browsers allow 6 connections per host (HTTP/1.1)
  pollEvery: 1000, // ms between short polls of the subscriptions past pollHeld
  wsUrl: null, // the WebSocket URL, when it is not the broker URL's /v1/ws
  token: null, // a JWT, or a function (may be async) giving a fresh one for each connection and refresh
});

/** An error the broker answered (`code` as in docs/protocol.md) or a client-side refusal. */
export class RewindError extends Error {
  constructor(code, message, status) {
    super(`${code}: ${message}`);
    this.name = "RewindError";
    this.code = code;
    this.status = status;
  }
}

/**
 * Waits that double from `min` to `max` (ms), as the Rust client's `Backoff`.
 */
export class Backoff {
  constructor(min, max) {
    this.min = min;
    this.max = max;
    this.reset();
  }
  next() {
    const wait = this.current;
    this.current = Math.min(this.current * 2, this.max);
    return wait;
  }
  reset() {
    this.current = Math.min(this.min, this.max);
  }
}

/** `ms` scaled by a random factor in [0.5, 1.5), so clients that lost one broker spread out. */
export function jitter(ms, random = Math.random) {
  return ms * (0.5 + random());
}

/**
 * The base HTTP URL and the WebSocket URL of a broker URL (http, https, ws or wss). A path
 * is kept as a base path (a broker behind a proxy at `https://host/rewind`); a query or
 * fragment is dropped. Anything else throws a `RewindError` with code `bad_url`.
 */
export function brokerUrls(url) {
  let u;
  try {
    u = new URL(url);
  } catch {
    throw new RewindError("bad_url", `a broker URL is http(s)://host[:port][/path] or ws(s)://…, not ${JSON.stringify(String(url))}`);
  }
  const scheme = { "http:": "http:", "https:": "https:", "ws:": "http:", "wss:": "https:" }[u.protocol];
  if (!scheme) {
    throw new RewindError("bad_url", `a broker URL is http(s):// or ws(s)://, not ${u.protocol}//`);
  }
  const base = u.pathname.replace(/\/+$/, "");
  const http = `${scheme}//${u.host}${base}`;
  const ws = `${scheme === "https:" ? "wss:" : "ws:"}//${u.host}${base}/v1/ws`;
  return { http, ws };
}

/** A position as the protocol writes it: a non-negative integer, "earliest" or "latest". */
export function checkPosition(from) {
  if (from === "earliest" || from === "latest") return from;
  if (Number.isSafeInteger(from) && from >= 0) return from;
  throw new RewindError("bad_position", `from must be an offset, "earliest" or "latest", not ${String(from)}`);
}

/** Bytes from standard base64 (a long-poll page's `data_b64`). */
export function fromBase64(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function isBytes(data) {
  return data instanceof Uint8Array || data instanceof ArrayBuffer || ArrayBuffer.isView(data);
}

function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function randomId() {
  const b = new Uint8Array(8);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * What a subscription knows about its stream: the next offset it wants and the epoch it
 * saw. Every frame or page goes through it, whichever transport brought it, so offsets
 * stay contiguous across reconnects and switches: an offset already taken is dropped, a
 * jump nobody announced is a gap.
 */
export class Cursor {
  constructor(from, epoch) {
    this.from = checkPosition(from);
    this.next = null; // the next offset wanted, once known
    this.epoch = epoch ?? null;
  }
  /** Where to start on a new connection or poll: the next offset, else the first position. */
  position() {
    return this.next ?? this.from;
  }
  /** The epoch to name when opening: only with an offset (the broker compares it then). */
  openEpoch() {
    return typeof this.position() === "number" ? this.epoch : null;
  }
  /** Notes the epoch; true when it is new or changed. */
  epochSeen(epoch) {
    if (this.epoch === epoch) return false;
    this.epoch = epoch;
    return true;
  }
  /** The first offset the broker will send; only taken when nothing was seen yet. */
  opened(from) {
    if (this.next === null) this.next = from;
  }
  /** The broker skipped to `from` (truncation). */
  truncated(from) {
    this.next = from;
  }
  /**
   * Classifies an event's offset: "duplicate" (drop it), or "ok" with an optional gap
   * `{from, to}` (offsets missing before it), and advances the cursor.
   */
  take(offset) {
    if (this.next !== null && offset < this.next) return { kind: "duplicate" };
    const gap = this.next !== null && offset > this.next ? { from: this.next, to: offset } : null;
    this.next = offset + 1;
    return { kind: "ok", gap };
  }
}

/**
 * Parses the text frames of `rewind.v1.json`, joining a frame that says `"bin": true`
 * with the binary frame after it. `push(message)` returns the completed frames.
 */
export class FrameReader {
  constructor() {
    this.waiting = null; // a frame waiting for its binary payload
  }
  push(message) {
    if (typeof message === "string") {
      const out = [];
      if (this.waiting) {
        out.push({ t: "error", code: "bad_frame", message: "a binary payload was due", ns: this.waiting.ns });
        this.waiting = null;
      }
      let frame;
      try {
        frame = JSON.parse(message);
      } catch {
        return out;
      }
      if (frame === null || typeof frame !== "object" || typeof frame.t !== "string") return out;
      if (frame.bin === true) {
        this.waiting = frame;
        return out;
      }
      out.push(frame);
      return out;
    }
    if (!this.waiting) return [];
    const frame = this.waiting;
    this.waiting = null;
    frame.data = asBytes(message);
    return [frame];
  }
}

/** An event as handed to the application. */
function eventOf(ns, f) {
  const ev = { ns, offset: f.offset, event: f.event, ts: f.ts, data: f.data };
  if (f.key !== undefined && f.key !== null) ev.key = f.key;
  return ev;
}

/**
 * One subscription: its cursor, the queue of items not yet handled, and the handlers.
 * Items are handled one at a time, in order; each event's handler is awaited before the
 * next, and credit goes back to the broker as handlers finish (in batches of a quarter of
 * the buffer), so the broker never sends more than `buffer` events ahead of them.
 */
class Subscription {
  constructor(client, ns, from, handlers, epoch) {
    this.client = client;
    this.ns = ns;
    this.cursor = new Cursor(from, epoch);
    this.handlers = handlers;
    this.queue = [];
    this.running = false;
    this.consumed = 0; // handled since the last credit
    this.ended = false;
    this.closed = false;
  }
  /** `{next, epoch}` to resume from later (`subscribe(ns, {from: next, epoch})`). */
  get resume() {
    return { next: this.cursor.next, epoch: this.cursor.epoch };
  }
  /** Free room in the buffer: the credit a new `open` may give. */
  room() {
    return Math.max(0, this.client.options.buffer - this.queue.length);
  }
  push(item) {
    this.queue.push(item);
    this.pump();
  }
  async pump() {
    if (this.running) return;
    this.running = true;
    while (this.queue.length > 0 && !this.closed) {
      const item = this.queue.shift();
      const handler = this.handlers[item.kind];
      try {
        if (handler) await handler(item.value);
      } catch (e) {
        this.client.emit("error", { ns: this.ns, error: e });
      }
      if (item.kind === "onEvent" || item.kind === "onGap") this.handled();
      if (this.roomWaiter && this.room() > 0) {
        const wake = this.roomWaiter;
        this.roomWaiter = null;
        wake();
      }
      if (item.kind === "onEnded") this.closed = true;
    }
    this.running = false;
  }
  handled() {
    this.consumed += 1;
    const batch = Math.max(1, Math.floor(this.client.options.buffer / 4));
    if (this.consumed >= batch) {
      const n = this.consumed;
      this.consumed = 0;
      this.client.transportFor(this).credit(this, n);
    }
  }
  /** Routes one event (from any transport) through the cursor. */
  event(ev) {
    if (this.ended) return;
    const t = this.cursor.take(ev.offset);
    if (t.kind === "duplicate") return;
    if (t.gap) {
      const reason = "offsets missing from the subscription's stream";
      this.push({ kind: "onGap", value: { ...t.gap, reason } });
    }
    this.push({ kind: "onEvent", value: ev });
  }
  epoch(epoch) {
    if (this.cursor.epochSeen(epoch)) this.push({ kind: "onEpoch", value: epoch });
  }
  truncated(requested, from, reason) {
    this.cursor.truncated(from);
    this.push({ kind: "onTruncated", value: { requested, from, reason } });
  }
  /** The broker ended it (deleted, or refused): the last item, never opened again. */
  end(reason) {
    if (this.ended) return;
    this.ended = true;
    this.client.forget(this);
    this.push({ kind: "onEnded", value: { reason } });
  }
  /** Stops it on the broker; handlers get nothing more. */
  close() {
    if (this.ended) return;
    this.ended = true;
    this.closed = true;
    this.queue.length = 0;
    this.client.forget(this);
    this.client.transportFor(this).unsubscribe(this);
  }
}

/** The WebSocket transport: one connection, every subscription and publish on it. */
class WsTransport {
  constructor(client, socket) {
    this.client = client;
    this.socket = socket;
    this.reader = new FrameReader();
    this.open = false;
    this.openedAt = 0;
    this.silence = null;
    // The token the connection was opened or last refreshed with (null without one).
    this.token = null;
    // Namespace -> how many `close`s sent here still wait for their answer. The broker
    // answers in order (opened, …, closed, opened, …), so every frame for the name up to
    // the last pending answer belongs to a subscription already closed.
    this.closing = new Map();
  }
  send(frame, bytes) {
    if (this.socket.readyState !== 1) return;
    this.socket.send(JSON.stringify(frame));
    if (bytes) this.socket.send(bytes);
  }
  armSilence() {
    clearTimeout(this.silence);
    this.silence = setTimeout(() => this.socket.close(4000, "silence"), this.client.options.liveness);
  }
  start() {
    this.open = true;
    this.openedAt = Date.now();
    this.armSilence();
    for (const sub of this.client.subs.values()) this.subscribe(sub);
    for (const p of this.client.pending.values()) this.publish(p);
  }
  subscribe(sub) {
    const frame = { t: "open", ns: sub.ns, from: sub.cursor.position(), credit: sub.room() };
    const epoch = sub.cursor.openEpoch();
    if (epoch) frame.epoch = epoch;
    sub.consumed = 0;
    this.send(frame);
  }
  unsubscribe(sub) {
    this.closing.set(sub.ns, (this.closing.get(sub.ns) ?? 0) + 1);
    this.send({ t: "close", ns: sub.ns });
  }
  credit(sub, n) {
    this.send({ t: "credit", ns: sub.ns, n });
  }
  publish(p) {
    const frame = { t: "publish", id: p.id, ns: p.ns, event: p.event, idempotency_key: p.idempotencyKey };
    if (p.key !== undefined) frame.key = p.key;
    if (p.bytes) {
      frame.bin = true;
      this.send(frame, p.bytes);
    } else {
      frame.data = p.data;
      this.send(frame);
    }
  }
  stop() {
    clearTimeout(this.silence);
    clearTimeout(this.stable);
    this.open = false;
    try {
      this.socket.close(1000);
    } catch {
      // already closed
    }
  }
  message(data) {
    this.armSilence();
    for (const f of this.reader.push(data)) this.frame(f);
  }
  frame(f) {
    const client = this.client;
    if (f.t === "ping") return this.send({ t: "pong" });
    if (f.t === "auth_expiring") return client.refreshToken(this);
    if (f.t === "auth_ok") return;
    if (f.t === "published") return client.answered(f.id, f.offset, null);
    if (f.t === "error" && f.id !== undefined && f.id !== null) {
      return client.answered(f.id, null, new RewindError(f.code, f.message));
    }
    const ns = f.ns;
    const pending = this.closing.get(ns);
    if (pending) {
      // Leftovers of subscriptions this connection closed; each answer ends one of them.
      if (f.t === "closed" || (f.t === "error" && f.code === "not_open")) {
        if (pending > 1) this.closing.set(ns, pending - 1);
        else this.closing.delete(ns);
      }
      return;
    }
    const sub = client.subs.get(ns);
    if (!sub) return;
    switch (f.t) {
      case "opened":
        sub.cursor.opened(f.from);
        sub.epoch(f.epoch);
        break;
      case "truncated":
        sub.truncated(f.requested, f.from, f.reason);
        break;
      case "event":
        sub.event(eventOf(ns, f));
        break;
      case "closed":
        sub.end(f.reason ?? "closed");
        break;
      case "error":
        if (f.offset !== undefined && f.offset !== null) {
          // An event the broker could not encode for us: a gap of one, and delivery goes on.
          const t = sub.cursor.take(f.offset);
          if (t.kind === "ok") {
            const from = t.gap ? t.gap.from : f.offset;
            sub.push({ kind: "onGap", value: { from, to: f.offset + 1, reason: `${f.code}: ${f.message}` } });
          }
        } else if (f.code === "not_found" && sub.cursor.epoch) {
          // Re-opened after a reconnect, and gone meanwhile: it was deleted.
          sub.end("deleted");
        } else if (f.code !== "not_open") {
          sub.end(`${f.code}: ${f.message}`);
        }
        break;
      default:
        break;
    }
  }
}

/**
 * The long-poll transport: one `GET …/events?from=&wait=` loop per subscription and
 * publishes by `POST`. It keeps nothing on the broker, so any node can answer any poll.
 */
class PollTransport {
  constructor(client) {
    this.client = client;
    this.loops = new Map(); // sub -> AbortController
    this.held = 0; // polls out now with a wait (at most options.pollHeld)
    this.stopped = false;
  }
  start() {
    for (const sub of this.client.subs.values()) this.subscribe(sub);
    for (const p of this.client.pending.values()) this.publish(p);
  }
  subscribe(sub) {
    const abort = new AbortController();
    this.loops.set(sub, abort);
    this.poll(sub, abort.signal);
  }
  unsubscribe(sub) {
    this.loops.get(sub)?.abort();
    this.loops.delete(sub);
  }
  credit() {
    // Polling is pulled: the next page is asked for when the buffer has room again.
  }
  stop() {
    this.stopped = true;
    for (const abort of this.loops.values()) abort.abort();
    this.loops.clear();
  }
  async poll(sub, signal) {
    const client = this.client;
    const backoff = new Backoff(client.options.backoffMin, client.options.backoffMax);
    while (!signal.aborted && !sub.ended) {
      if (sub.room() === 0) {
        await new Promise((resolve) => {
          sub.roomWaiter = resolve;
          signal.addEventListener("abort", resolve, { once: true });
        });
        continue;
      }
      const from = sub.cursor.position();
      const limit = Math.min(client.options.pollLimit, sub.room());
      // Only pollHeld polls are held at once, so connections stay free for publishes;
      // the others ask without waiting, every pollEvery, until a held slot is free.
      const holds = this.held < client.options.pollHeld;
      if (holds) this.held += 1;
      const q = `from=${from}&limit=${limit}&wait=${holds ? client.options.pollWait : 0}`;
      let res;
      let body;
      try {
        res = await client.fetch(`${client.http}/v1/namespaces/${encodeURIComponent(sub.ns)}/events?${q}`, {
          signal,
          headers: { accept: "application/json" },
        });
        body = await res.json();
      } catch (e) {
        if (holds) this.held -= 1;
        if (signal.aborted) return;
        client.pollFailed(e);
        await client.sleep(jitter(backoff.next()), signal);
        continue;
      }
      if (holds) this.held -= 1;
      if (signal.aborted) return;
      client.pollWorked();
      if (res.status === 404) {
        sub.end(sub.cursor.epoch ? "deleted" : `not_found: ${body?.error?.message ?? "no such namespace"}`);
        return;
      }
      if (res.status === 400 && body?.error?.code === "bad_position" && sub.cursor.epoch) {
        // Beyond the end: the log may have been re-created shorter (a new epoch).
        if (await this.epochChanged(sub, from, signal)) continue;
      }
      if (!res.ok) {
        if (res.status >= 500 || res.status === 429) {
          await client.sleep(jitter(backoff.next()), signal);
          continue;
        }
        sub.end(`${body?.error?.code ?? res.status}: ${body?.error?.message ?? "refused"}`);
        return;
      }
      backoff.reset();
      this.page(sub, from, body);
      if (!holds && body.events.length === 0) await client.sleep(client.options.pollEvery, signal);
    }
  }
  /** Checks the namespace's epoch; on a change, restarts the cursor at its earliest. */
  async epochChanged(sub, from, signal) {
    try {
      const res = await this.client.fetch(`${this.client.http}/v1/namespaces/${encodeURIComponent(sub.ns)}`, { signal });
      if (!res.ok) return false;
      const info = await res.json();
      if (info.epoch === sub.cursor.epoch) return false;
      sub.epoch(info.epoch);
      sub.truncated(from, info.earliest, "epoch");
      return true;
    } catch {
      return false;
    }
  }
  page(sub, from, body) {
    if (sub.cursor.epoch && body.epoch !== sub.cursor.epoch && typeof from === "number") {
      // The log was re-created: our offsets mean nothing in it; start at its earliest.
      sub.epoch(body.epoch);
      sub.truncated(from, body.earliest, "epoch");
      return;
    }
    sub.epoch(body.epoch);
    const first = body.events.length > 0 ? body.events[0].offset : body.next;
    if (sub.cursor.next === null) sub.cursor.opened(typeof from === "number" ? from : first);
    if (body.truncated) sub.truncated(from, first, "retention");
    for (const e of body.events) {
      const data = e.data_b64 !== undefined ? fromBase64(e.data_b64) : e.data;
      sub.event(eventOf(sub.ns, { ...e, data }));
    }
    if (body.error && typeof body.error.offset === "number") sub.cursor.take(body.error.offset);
  }
  async publish(p) {
    const client = this.client;
    const backoff = new Backoff(client.options.backoffMin, client.options.backoffMax);
    const base = `${client.http}/v1/namespaces/${encodeURIComponent(p.ns)}/events`;
    while (client.pending.get(p.id) === p && client.active === this) {
      let url = base;
      const init = { method: "POST", headers: { "idempotency-key": p.idempotencyKey } };
      if (p.bytes) {
        const params = new URLSearchParams({ event: p.event });
        if (p.key !== undefined) params.set("key", p.key);
        url = `${base}?${params}`;
        init.headers["content-type"] = "application/octet-stream";
        init.body = p.bytes;
      } else {
        init.headers["content-type"] = "application/json";
        const one = { event: p.event, data: p.data };
        if (p.key !== undefined) one.key = p.key;
        init.body = JSON.stringify(one);
      }
      try {
        const res = await client.fetch(url, init);
        const body = await res.json();
        if (res.ok) return client.answered(p.id, body.offset ?? body.first, null);
        if (res.status < 500 && res.status !== 429 && res.status !== 408) {
          return client.answered(p.id, null, new RewindError(body?.error?.code ?? "http", body?.error?.message ?? String(res.status), res.status));
        }
      } catch {
        // The outcome is unknown: sent again with the same idempotency key.
      }
      await client.sleep(jitter(backoff.next()));
    }
  }
}

/**
 * A connection to one broker. Build it with `connect`.
 *
 * `state`: "connecting" (no transport works yet), "open", "closed" (after `close()`);
 * `transport`: "websocket", "longpoll" or null. Listen with `on("state", fn)`; `fn` gets
 * `{state, transport}`. `on("error", fn)` gets a handler's exception `{ns, error}`.
 */
export class Client {
  constructor(url, options = {}) {
    this.options = { ...DEFAULTS, ...options };
    const urls = brokerUrls(url);
    this.http = urls.http;
    this.wsUrl = this.options.wsUrl ?? urls.ws;
    this.WebSocket = this.options.WebSocket ?? globalThis.WebSocket;
    const fetch = this.options.fetch ?? globalThis.fetch.bind(globalThis);
    // Every request carries the token, if any, as `Authorization: Bearer`.
    this.fetch = async (url, init = {}) => {
      const token = await this.token();
      if (!token) return fetch(url, init);
      return fetch(url, { ...init, headers: { ...(init.headers ?? {}), authorization: `Bearer ${token}` } });
    };
    this.subs = new Map(); // ns -> Subscription
    this.pending = new Map(); // publish id -> pending publish
    this.nextId = 1;
    this.keyPrefix = randomId();
    this.listeners = { state: new Set(), error: new Set() };
    this.state = "connecting";
    this.active = null; // the active WsTransport or PollTransport
    this.wsFailures = 0;
    this.wsBackoff = new Backoff(this.options.backoffMin, this.options.backoffMax);
    this.probeBackoff = new Backoff(this.options.probeMin, this.options.probeMax);
    this.timer = null;
    this.probing = null; // a WebSocket being tried while long-polling
    this.firstOpen = null;
    this.stopped = false;
  }

  /** "websocket", "longpoll" or null. */
  get transport() {
    if (this.active instanceof WsTransport) return "websocket";
    if (this.active instanceof PollTransport) return "longpoll";
    return null;
  }

  on(type, fn) {
    this.listeners[type].add(fn);
    return () => this.listeners[type].delete(fn);
  }
  emit(type, value) {
    for (const fn of this.listeners[type]) {
      try {
        fn(value);
      } catch {
        // a listener's failure is its own
      }
    }
  }
  setState(state) {
    const transport = this.transport;
    if (this.state === state && this.shown === transport) return;
    this.state = state;
    this.shown = transport;
    this.emit("state", { state, transport });
  }

  /** The transport serving `sub` (or one that ignores it while there is none). */
  transportFor() {
    return this.active ?? { credit() {}, unsubscribe() {}, subscribe() {}, publish() {} };
  }

  sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      signal?.addEventListener("abort", () => {
        clearTimeout(t);
        resolve();
      }, { once: true });
    });
  }

  /** Starts; resolves once a transport works (the first connection). */
  start() {
    this.firstOpen = new Promise((resolve, reject) => {
      this.resolveFirst = resolve;
      this.rejectFirst = reject;
    });
    if (this.options.transport === "longpoll") this.useLongPoll();
    else this.dial();
    return this.firstOpen;
  }

  /** The token to send now: the `token` option, or what its function gives; null without. */
  async token() {
    const t = this.options.token;
    return (typeof t === "function" ? await t() : t) || null;
  }

  /** The broker warned that the connection's token expires: a fresh one, sent in place.
   * The token the connection already has is not sent again: it would be warned of again
   * at once, and the two would loop. */
  async refreshToken(t) {
    if (typeof this.options.token !== "function") return;
    try {
      const token = await this.options.token();
      if (token && token !== t.token && this.active === t) {
        t.token = token;
        t.send({ t: "auth", token });
      }
    } catch (error) {
      this.emit("error", { ns: null, error });
    }
  }

  /** Opens a WebSocket (the token, if any, in `?token=`: a browser's WebSocket cannot set
   * headers); on success it becomes the transport. */
  async dial() {
    if (this.stopped) return;
    let url = this.wsUrl;
    let token;
    try {
      token = await this.token();
      if (token) url += `${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
    } catch (e) {
      this.wsFailed(e);
      return;
    }
    if (this.stopped) return;
    let socket;
    try {
      socket = new this.WebSocket(url, "rewind.v1.json");
    } catch (e) {
      this.wsFailed(e);
      return;
    }
    socket.binaryType = "arraybuffer";
    const t = new WsTransport(this, socket);
    t.token = token;
    let opened = false;
    let abandoned = false;
    // A handshake that hangs (a proxy that holds it, a listener that never answers) fails.
    const giveUp = setTimeout(() => {
      abandoned = true;
      if (this.probing === socket) this.probing = null;
      try {
        socket.close();
      } catch {
        // not open
      }
      this.wsFailed(new Error("the WebSocket did not open in time"));
    }, this.options.openTimeout);
    socket.onopen = () => {
      clearTimeout(giveUp);
      if (abandoned) return socket.close(1000);
      if (this.stopped) return socket.close(1000);
      opened = true;
      this.adopt(t);
    };
    socket.onmessage = (m) => {
      if (this.active === t) t.message(m.data);
    };
    socket.onclose = () => {
      clearTimeout(giveUp);
      clearTimeout(t.silence);
      clearTimeout(t.stable);
      if (abandoned) return;
      if (this.probing === socket) this.probing = null;
      if (this.active !== t && opened) return;
      if (!opened) return this.wsFailed(new Error("the WebSocket did not open"));
      const lasted = Date.now() - t.openedAt;
      this.active = null;
      t.open = false;
      if (this.stopped) return;
      this.setState("connecting");
      if (lasted < this.options.stableAfter) this.wsFailed(new Error("the WebSocket was cut"));
      else {
        this.wsFailures = 0;
        this.retryWs();
      }
    };
    socket.onerror = () => {};
    if (this.active instanceof PollTransport) this.probing = socket;
  }

  /** `t` opened: it takes over from whatever served before. */
  adopt(t) {
    const previous = this.active;
    if (previous instanceof PollTransport) previous.stop();
    this.probing = null;
    this.active = t;
    // The waits restart only once it has lasted `stableAfter`: a proxy that cuts every
    // WebSocket soon after the upgrade must not make the client redial at the shortest wait.
    t.stable = setTimeout(() => {
      if (this.active !== t) return;
      this.wsBackoff.reset();
      this.probeBackoff.reset();
    }, this.options.stableAfter);
    t.start();
    this.setState("open");
    this.resolveFirst?.(this);
  }

  wsFailed() {
    if (this.stopped) return;
    this.wsFailures += 1;
    if (this.active instanceof PollTransport) {
      this.scheduleProbe();
      return;
    }
    if (this.options.transport === "auto" && this.wsFailures >= this.options.fallbackAfter) {
      this.useLongPoll();
      return;
    }
    this.retryWs();
  }

  retryWs() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.dial(), jitter(this.wsBackoff.next()));
  }

  scheduleProbe() {
    if (this.options.transport !== "auto" || this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.dial(), jitter(this.probeBackoff.next()));
  }

  useLongPoll() {
    const t = new PollTransport(this);
    this.active = t;
    t.start();
    this.setState("connecting");
    this.checkHttp(t);
    this.scheduleProbe();
  }

  /** Asks `/healthz` until the broker answers over HTTP: long-poll then works. */
  async checkHttp(t) {
    const backoff = new Backoff(this.options.backoffMin, this.options.backoffMax);
    while (this.active === t && this.state !== "open") {
      try {
        const res = await this.fetch(`${this.http}/healthz`);
        if (res.ok) return this.pollWorked();
      } catch {
        // not up yet
      }
      await this.sleep(jitter(backoff.next()));
    }
  }

  /** A poll answered: long-poll works (the state shows it as open). */
  pollWorked() {
    if (!(this.active instanceof PollTransport)) return;
    this.setState("open");
    this.resolveFirst?.(this);
  }
  pollFailed() {
    if (this.active instanceof PollTransport) this.setState("connecting");
  }

  /**
   * Follows `ns` from `options.from` ("earliest", "latest" — the default — or an offset),
   * naming `options.epoch` when resuming. `handlers`: `onEvent(ev)` (awaited when it
   * returns a promise), `onEpoch(epoch)`, `onTruncated({requested, from, reason})`,
   * `onGap({from, to, reason})`, `onEnded({reason})`.
   */
  subscribe(ns, options = {}, handlers = {}) {
    if (this.stopped) throw new RewindError("closed", "the client is closed");
    if (this.subs.has(ns)) throw new RewindError("already_open", `${ns} is already subscribed on this client`);
    const sub = new Subscription(this, ns, options.from ?? "latest", handlers, options.epoch);
    this.subs.set(ns, sub);
    if (this.active instanceof WsTransport && this.active.open) {
      // After a `close` of the same name on this connection, frames up to its `closed`
      // are the old subscription's (`closing`); the broker answers this `open` after it.
      this.active.subscribe(sub);
    } else if (this.active instanceof PollTransport) this.active.subscribe(sub);
    return sub;
  }

  forget(sub) {
    if (this.subs.get(sub.ns) === sub) this.subs.delete(sub.ns);
  }

  /**
   * Appends one event; resolves to its offset once it is durable. `data` is any JSON
   * value, or bytes (`Uint8Array`, `ArrayBuffer`, a typed array). `options.key` is stored
   * with the event; `options.idempotencyKey` replaces the client's own key (every publish
   * carries one, so a publish whose answer was lost is sent again and appended once).
   * Rejects with a `RewindError` when the broker refuses it.
   */
  publish(ns, event, data, options = {}) {
    if (this.stopped) return Promise.reject(new RewindError("closed", "the client is closed"));
    const id = this.nextId++;
    const p = {
      id,
      ns,
      event,
      key: options.key ?? undefined,
      idempotencyKey: options.idempotencyKey ?? `${this.keyPrefix}-${id}`,
    };
    if (isBytes(data)) p.bytes = asBytes(data);
    else {
      // Serialised once, here: data JSON cannot carry is refused now and never kept for
      // a resend; the copy also keeps later changes to `data` out of a resend.
      let text;
      try {
        text = JSON.stringify(data === undefined ? null : data);
      } catch (e) {
        return Promise.reject(new RewindError("bad_data", `data cannot be serialised as JSON: ${e.message}`));
      }
      if (text === undefined) return Promise.reject(new RewindError("bad_data", `data cannot be serialised as JSON: ${typeof data}`));
      p.data = JSON.parse(text);
    }
    const done = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    this.pending.set(id, p);
    if (this.active instanceof WsTransport && this.active.open) this.active.publish(p);
    else if (this.active instanceof PollTransport) this.active.publish(p);
    return done;
  }

  answered(id, offset, error) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (error) p.reject(error);
    else p.resolve(offset);
  }

  /** Closes every subscription and the connection; pending publishes reject. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const sub of [...this.subs.values()]) sub.close();
    this.active?.stop();
    this.probing?.close();
    this.active = null;
    for (const p of this.pending.values()) p.reject(new RewindError("closed", "the client was closed"));
    this.pending.clear();
    this.setState("closed");
    this.rejectFirst?.(new RewindError("closed", "the client was closed"));
  }
}

/**
 * Connects to the broker at `url` (`http://host:port`, https, ws or wss); resolves to a
 * `Client` once a transport works (a WebSocket, or long-polling after the WebSocket
 * failed `fallbackAfter` times). It keeps reconnecting after that, for ever, until
 * `close()`.
 */
export function connect(url, options = {}) {
  let client;
  try {
    client = new Client(url, options);
  } catch (e) {
    return Promise.reject(e);
  }
  return client.start();
}
