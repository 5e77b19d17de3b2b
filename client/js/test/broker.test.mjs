// rewind.js against the real broker. Run by tests/tests/js_client.rs, which starts the
// broker, a proxy that can refuse WebSockets and a control endpoint, and passes their URLs
// in REWIND_URL, REWIND_PROXY_URL and REWIND_CONTROL_URL (see that file). Without them
// every test here fails, saying so.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { connect, RewindError } from "../rewind.js";

const URL_ = process.env.REWIND_URL;
const PROXY = process.env.REWIND_PROXY_URL;
const CONTROL = process.env.REWIND_CONTROL_URL;

function need() {
  assert.ok(URL_ && PROXY && CONTROL, "run these through `cargo test -p rewind-tests --test js_client` (REWIND_URL, REWIND_PROXY_URL and REWIND_CONTROL_URL are unset)");
}

/** Clients of the running test, closed after it whatever happened (else a failed test's
 * client keeps reconnecting and Node never exits). */
const clients = new Set();
async function open(url, options) {
  const client = await connect(url, options);
  clients.add(client);
  return client;
}
afterEach(() => {
  for (const client of clients) client.close();
  clients.clear();
});

let unique = 0;
const name = (what) => `js.${what}.${process.pid}.${unique++}`;

/** Fast reconnects, so the tests do not wait on the defaults. */
const FAST = { backoffMin: 20, backoffMax: 200, probeMin: 50, probeMax: 300, pollWait: 2, stableAfter: 500, openTimeout: 1000 };

async function control(path, method = "POST") {
  const res = await fetch(`${CONTROL}${path}`, { method });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return text;
}

/** Polls `cond` every 10 ms until it holds, for at most `ms`. */
async function until(cond, what, ms = 20000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Publishes over HTTP, retrying while the broker is down (a restart). */
async function httpPublish(ns, event, data) {
  for (let i = 0; ; i++) {
    try {
      const res = await fetch(`${URL_}/v1/namespaces/${ns}/events`, {
        method: "POST",
        headers: { "content-type": "application/json", "idempotency-key": `${ns}-${event}` },
        body: JSON.stringify({ event, data }),
      });
      if (res.status === 201) return (await res.json()).offset;
      if (res.status < 500) throw new Error(`publish refused: ${res.status} ${await res.text()}`);
    } catch (e) {
      if (i > 200 || String(e.message).startsWith("publish refused")) throw e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Subscribes and records every item. */
function record(client, ns, from, extra = {}) {
  const items = { events: [], gaps: [], truncated: [], ended: [], epochs: [] };
  const sub = client.subscribe(ns, { from, ...extra }, {
    onEvent: (e) => items.events.push(e),
    onGap: (g) => items.gaps.push(g),
    onTruncated: (t) => items.truncated.push(t),
    onEnded: (e) => items.ended.push(e),
    onEpoch: (e) => items.epochs.push(e),
  });
  items.sub = sub;
  items.offsets = () => items.events.map((e) => e.offset);
  return items;
}

function contiguous(offsets, from, to) {
  assert.deepEqual(offsets, Array.from({ length: to - from }, (_, i) => from + i));
}

for (const transport of ["websocket", "longpoll"]) {
  test(`${transport}: publish returns offsets; JSON, keys and bytes arrive as published`, async () => {
    need();
    const client = await open(URL_, { ...FAST, transport });
    assert.equal(client.transport, transport);
    const ns = name("basic");
    assert.equal(await client.publish(ns, "first", { a: [1, "x", null] }), 0);
    const items = record(client, ns, "earliest");
    assert.equal(await client.publish(ns, "keyed", "text", { key: "k-1" }), 1);
    const bytes = new Uint8Array([0, 1, 2, 253, 254, 255, 10, 13]);
    assert.equal(await client.publish(ns, "blob", bytes), 2);
    assert.equal(await client.publish(ns, "buffer", bytes.buffer, { key: "b" }), 3);
    await until(() => items.events.length === 4, "four events");
    const [a, b, c, d] = items.events;
    assert.deepEqual([a.ns, a.offset, a.event, a.data, a.key], [ns, 0, "first", { a: [1, "x", null] }, undefined]);
    assert.deepEqual([b.event, b.data, b.key], ["keyed", "text", "k-1"]);
    assert.ok(c.data instanceof Uint8Array && d.data instanceof Uint8Array);
    assert.deepEqual([...c.data], [...bytes]);
    assert.deepEqual([...d.data], [...bytes]);
    assert.equal(d.key, "b");
    assert.ok(typeof a.ts === "number" && a.ts > 1.7e12);
    assert.equal(items.epochs.length, 1);
    assert.match(items.epochs[0], /^[0-9a-f]{16}$/);
    assert.deepEqual(items.sub.resume, { next: 4, epoch: items.epochs[0] });
    // Every reader sees the same: the HTTP read page.
    const page = await (await fetch(`${URL_}/v1/namespaces/${ns}/events?from=0`)).json();
    assert.deepEqual(page.events.map((e) => [e.offset, e.event]), items.events.map((e) => [e.offset, e.event]));
    client.close();
  });

  test(`${transport}: a refused publish rejects with the broker's code, and an idempotency key appends once`, async () => {
    need();
    const client = await open(URL_, { ...FAST, transport });
    await assert.rejects(client.publish("bad..name", "e", 1), (e) => e instanceof RewindError && e.code === "bad_namespace");
    await assert.rejects(client.publish(name("ok"), "", 1), (e) => e.code === "bad_frame");
    const ns = name("idem");
    const first = await client.publish(ns, "e", { n: 1 }, { idempotencyKey: "same-key" });
    const again = await client.publish(ns, "e", { n: 1 }, { idempotencyKey: "same-key" });
    assert.equal(again, first);
    await assert.rejects(client.publish(ns, "e", { n: 2 }, { idempotencyKey: "same-key" }), (e) => e.code === "idempotency_conflict");
    const info = await (await fetch(`${URL_}/v1/namespaces/${ns}`)).json();
    assert.equal(info.events, 1);
    client.close();
  });

  test(`${transport}: closing and re-subscribing to a namespace hands nothing of the old subscription to the new one`, async () => {
    need();
    const client = await open(URL_, { ...FAST, transport });
    const ns = name("resub");
    for (let i = 0; i < 40; i++) await client.publish(ns, "e", i);
    // The tester's repro: two closes pending on the same name, then a third subscription.
    const s1 = record(client, ns, 0);
    s1.sub.close();
    const s2 = record(client, ns, 10);
    s2.sub.close();
    const s3 = record(client, ns, 20);
    await until(() => s3.events.length >= 20 || s3.ended.length > 0, "s3's events");
    assert.deepEqual(s3.ended, []);
    contiguous(s3.offsets(), 20, 40);
    s3.sub.close();
    // Thirty close/re-subscribe cycles (a double-clicked Follow, many times over).
    for (let i = 0; i < 30; i++) record(client, ns, i).sub.close();
    const last = record(client, ns, 5);
    await until(() => last.events.length >= 35 || last.ended.length > 0, "the last subscription's events");
    assert.deepEqual(last.ended, []);
    contiguous(last.offsets(), 5, 40);
    assert.equal(await client.publish(ns, "e", 40), 40);
    await until(() => last.events.length === 36, "the live event");
    contiguous(last.offsets(), 5, 41);
    client.close();
  });

  test(`${transport}: data JSON cannot carry rejects with bad_data and is kept for no resend`, async () => {
    need();
    const client = await open(URL_, { ...FAST, transport });
    const ns = name("baddata");
    const cyclic = { a: 1 };
    cyclic.self = cyclic;
    for (const data of [10n, cyclic, { n: 1n }, () => 1]) {
      let sync = null;
      let promise;
      try {
        promise = client.publish(ns, "e", data);
      } catch (e) {
        sync = e;
      }
      assert.equal(sync, null, "publish threw instead of rejecting");
      await assert.rejects(promise, (e) => e instanceof RewindError && e.code === "bad_data");
    }
    assert.equal(client.pending.size, 0);
    assert.equal(await client.publish(ns, "e", { ok: true }), 0);
    const info = await (await fetch(`${URL_}/v1/namespaces/${ns}`)).json();
    assert.equal(info.events, 1);
    client.close();
  });

  test(`${transport}: deletion ends the subscription with reason deleted`, async () => {
    need();
    const client = await open(URL_, { ...FAST, transport });
    const ns = name("deleted");
    await client.publish(ns, "e", 1);
    const items = record(client, ns, "earliest");
    await until(() => items.events.length === 1, "the event");
    const res = await fetch(`${URL_}/v1/namespaces/${ns}`, { method: "DELETE" });
    assert.equal(res.status, 204);
    await until(() => items.ended.length === 1, "the end");
    assert.deepEqual(items.ended, [{ reason: "deleted" }]);
    // A subscription to a namespace that does not exist ends at once, and creates nothing.
    const missing = record(client, name("missing"), "earliest");
    await until(() => missing.ended.length === 1, "the refusal");
    assert.match(missing.ended[0].reason, /^not_found/);
    client.close();
  });

  test(`${transport}: retention and a re-created log are announced as truncation`, async () => {
    need();
    const client = await open(URL_, { ...FAST, transport });
    const ns = name("trunc");
    const put = await fetch(`${URL_}/v1/namespaces/${ns}`, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ retention: { max_events: 2 } }),
    });
    assert.equal(put.status, 201);
    for (let i = 0; i < 6; i++) await client.publish(ns, "e", i);
    await until(async () => (await (await fetch(`${URL_}/v1/namespaces/${ns}`)).json()).earliest >= 4, "retention");
    const items = record(client, ns, 0);
    await until(() => items.events.length === 2, "the retained events");
    assert.deepEqual(items.truncated, [{ requested: 0, from: 4, reason: "retention" }]);
    contiguous(items.offsets(), 4, 6);
    assert.deepEqual(items.gaps, []);
    const old = items.sub.resume;
    items.sub.close();

    await fetch(`${URL_}/v1/namespaces/${ns}`, { method: "DELETE" });
    await client.publish(ns, "reborn", 1);
    const again = record(client, ns, old.next, { epoch: old.epoch });
    await until(() => again.events.length === 1, "the new log's event");
    assert.equal(again.truncated.length, 1);
    assert.equal(again.truncated[0].reason, "epoch");
    assert.notEqual(again.epochs.at(-1), old.epoch);
    assert.equal(again.events[0].event, "reborn");
    client.close();
  });

  test(`${transport}: async handlers are awaited in order and the buffer bounds what is held`, async () => {
    need();
    const client = await open(URL_, { ...FAST, transport, buffer: 4, pollLimit: 4 });
    const ns = name("credit");
    for (let i = 0; i < 30; i++) await client.publish(ns, "e", i);
    const seen = [];
    let most = 0;
    let running = 0;
    const sub = client.subscribe(ns, { from: "earliest" }, {
      onEvent: async (e) => {
        running++;
        most = Math.max(most, sub.queue.length);
        await new Promise((r) => setTimeout(r, 2));
        seen.push(e.offset);
        assert.equal(running, 1, "one handler at a time");
        running--;
      },
    });
    await until(() => seen.length === 30, "thirty events");
    contiguous(seen, 0, 30);
    assert.ok(most <= 4, `at most the buffer (4) held, saw ${most}`);
    client.close();
  });
}

test("many subscriptions share one WebSocket", async () => {
  need();
  const before = Number(await control("/ws/upgrades", "GET"));
  const client = await open(PROXY, { ...FAST, transport: "websocket" });
  const names = [name("multi"), name("multi"), name("multi")];
  for (const ns of names) await client.publish(ns, "e", ns);
  const subs = names.map((ns) => record(client, ns, "earliest"));
  await until(() => subs.every((s) => s.events.length === 1), "an event on each");
  subs.forEach((s, i) => assert.equal(s.events[0].data, names[i]));
  assert.equal(Number(await control("/ws/upgrades", "GET")) - before, 1);
  client.close();
});

test("a broker restart: every subscription resumes with no gap and no duplicate, and unanswered publishes land once", async () => {
  need();
  const client = await open(URL_, { ...FAST });
  const states = [];
  client.on("state", (s) => states.push(s.state));
  const ns = name("restart");
  const live = name("restart");
  for (let i = 0; i < 5; i++) await client.publish(ns, "before", i);
  await client.publish(live, "before", 0);
  const a = record(client, ns, "earliest");
  const b = record(client, live, "latest");
  await until(() => a.events.length === 5, "the first five");
  await control("/restart");
  for (let i = 5; i < 10; i++) await httpPublish(ns, `after-${i}`, i);
  await httpPublish(live, "after", 1);
  // A publish through the client while it reconnects is sent when it can be, once.
  const offset = await client.publish(ns, "through-client", 10);
  assert.equal(offset, 10);
  await until(() => a.events.length === 11 && b.events.length === 1, "every event after the restart");
  contiguous(a.offsets(), 0, 11);
  assert.deepEqual(b.offsets(), [1]);
  assert.deepEqual([a.gaps, b.gaps, a.truncated, b.truncated], [[], [], [], []]);
  assert.ok(states.includes("connecting"), `the client saw the link go: ${states}`);
  await until(() => client.state === "open", "open again");
  client.close();
});

test("WebSockets refused by a proxy: long-polling takes over, then the WebSocket again, with no gap and no duplicate", async () => {
  need();
  const client = await open(PROXY, { ...FAST });
  const transports = [];
  client.on("state", (s) => transports.push(s.transport));
  assert.equal(client.transport, "websocket");
  const ns = name("fallback");
  await client.publish(ns, "e", 0);
  const items = record(client, ns, "earliest");
  await until(() => items.events.length === 1, "the first event");

  await control("/ws/refuse");
  await until(() => client.transport === "longpoll", "the switch to long-polling");
  for (let i = 1; i < 6; i++) await httpPublish(ns, `poll-${i}`, i);
  assert.equal(await client.publish(ns, "over-http", 6), 6);
  await until(() => items.events.length === 7, "events over long-poll");
  assert.equal(client.transport, "longpoll");

  await control("/ws/allow");
  await until(() => client.transport === "websocket", "the return to the WebSocket", 30000);
  for (let i = 7; i < 10; i++) await httpPublish(ns, `ws-${i}`, i);
  assert.equal(await client.publish(ns, "over-ws", 10), 10);
  await until(() => items.events.length === 11, "events over the WebSocket again");
  contiguous(items.offsets(), 0, 11);
  assert.deepEqual([items.gaps, items.truncated, items.ended], [[], [], []]);
  assert.ok(transports.includes("longpoll") && transports.at(-1) === "websocket", String(transports));
  client.close();
});

test("a WebSocket refused from the start: connect resolves over long-poll", async () => {
  need();
  await control("/ws/refuse");
  try {
    const client = await open(PROXY, { ...FAST, probeMin: 60000, probeMax: 60000 });
    assert.deepEqual([client.state, client.transport], ["open", "longpoll"]);
    const ns = name("refused");
    assert.equal(await client.publish(ns, "e", { over: "http" }), 0);
    const items = record(client, ns, "earliest");
    await until(() => items.events.length === 1, "the event over long-poll");
    assert.deepEqual(items.events[0].data, { over: "http" });
    client.close();
  } finally {
    await control("/ws/allow");
  }
});

test("WebSockets that open but are cut at once: after fallbackAfter of them, long-polling; then the WebSocket again", async () => {
  need();
  const client = await open(PROXY, { ...FAST });
  assert.equal(client.transport, "websocket");
  const ns = name("cut");
  await client.publish(ns, "e", 0);
  const items = record(client, ns, "earliest");
  await until(() => items.events.length === 1, "the first event");
  const before = Number(await control("/ws/upgrades", "GET"));
  try {
    await control("/ws/cut");
    await until(() => client.transport === "longpoll", "the switch to long-polling");
    // The handshakes went through: it is the cuts that made it switch.
    // Handshakes went through (the first cut one may have been the socket from before,
    // itself younger than stableAfter): it is the cuts that made the client switch.
    const passed = Number(await control("/ws/upgrades", "GET")) - before;
    assert.ok(passed >= 1, `${passed} handshakes passed the proxy`);
    for (let i = 1; i < 4; i++) await httpPublish(ns, `cut-${i}`, i);
    await until(() => items.events.length === 4, "events over long-poll");
  } finally {
    await control("/ws/allow");
  }
  await until(() => client.transport === "websocket", "the return to the WebSocket", 30000);
  await httpPublish(ns, "back", 4);
  await until(() => items.events.length === 5, "events over the WebSocket again");
  contiguous(items.offsets(), 0, 5);
  assert.deepEqual([items.gaps, items.truncated, items.ended], [[], [], []]);
  client.close();
});

test("WebSockets cut soon after every upgrade: the waits between tries keep growing instead of restarting", async () => {
  need();
  const ns = name("flap");
  await httpPublish(ns, "e", 0);
  const client = await open(PROXY, { ...FAST, probeMin: 50, probeMax: 4000, stableAfter: 1000 });
  const items = record(client, ns, "earliest");
  await until(() => items.events.length === 1, "the first event");
  try {
    await control("/ws/cut");
    await until(() => client.transport === "longpoll", "the switch to long-polling");
    // A measuring window, not a wait for an event: sessions the proxy passed in 4 s.
    // Growing waits (50 ms doubling to 4 s, each session cut after 100 ms) allow about
    // six; waits restarted by every cut WebSocket allow some twenty or more.
    const before = Number(await control("/ws/upgrades", "GET"));
    await new Promise((r) => setTimeout(r, 4000));
    const sessions = Number(await control("/ws/upgrades", "GET")) - before;
    assert.ok(sessions <= 9, `${sessions} WebSocket sessions in 4 s behind a cutting proxy`);
  } finally {
    await control("/ws/allow");
  }
  client.close();
});

test("long-poll: at most pollHeld polls are held at once, so publishes always find a free connection", async () => {
  need();
  let held = 0;
  let most = 0;
  // Counts the polls out at once that ask the broker to hold them (wait > 0).
  const fetch_ = async (url, init) => {
    const holds = /\/events\?.*wait=[1-9]/.test(String(url));
    if (holds) most = Math.max(most, ++held);
    try {
      return await fetch(url, init);
    } finally {
      if (holds) held -= 1;
    }
  };
  const client = await open(URL_, { ...FAST, transport: "longpoll", pollWait: 5, pollEvery: 100, fetch: fetch_ });
  const names = Array.from({ length: 7 }, () => name("held"));
  for (const ns of names) await client.publish(ns, "e", 0);
  const subs = names.map((ns) => record(client, ns, "earliest"));
  await until(() => subs.every((s) => s.events.length === 1), "the first event on each");
  for (const ns of names) await client.publish(ns, "e", 1);
  await until(() => subs.every((s) => s.events.length === 2), "the second event on each");
  subs.forEach((s) => contiguous(s.offsets(), 0, 2));
  assert.ok(most <= 4, `${most} polls held at once`);
  client.close();
});
