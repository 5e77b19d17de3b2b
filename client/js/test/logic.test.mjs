// Pure-logic tests of rewind.js: no broker needed (`node --test client/js/test/logic.test.mjs`).
// The WebSocket is a fake here, so the tests can send what a real broker never would
// (a hole in the offsets, an offset twice).

import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff, brokerUrls, checkPosition, connect, Cursor, FrameReader, fromBase64, jitter, RewindError } from "../rewind.js";

test("backoff doubles from min to max and starts again after reset", () => {
  const b = new Backoff(100, 1000);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next(), b.next()], [100, 200, 400, 800, 1000, 1000]);
  b.reset();
  assert.equal(b.next(), 100);
  assert.equal(new Backoff(500, 200).next(), 200);
});

test("jitter scales a wait by 0.5 to 1.5", () => {
  assert.equal(jitter(1000, () => 0), 500);
  assert.equal(jitter(1000, () => 0.999), 1499);
  for (let i = 0; i < 100; i++) {
    const j = jitter(100);
    assert.ok(j >= 50 && j < 150, String(j));
  }
});

test("broker URLs of every scheme, and others refused", () => {
  assert.deepEqual(brokerUrls("http://127.0.0.1:7070"), { http: "http://127.0.0.1:7070", ws: "ws://127.0.0.1:7070/v1/ws" });
  assert.deepEqual(brokerUrls("https://h:1/x"), { http: "https://h:1/x", ws: "wss://h:1/x/v1/ws" });
  assert.deepEqual(brokerUrls("http://h/base/path/?q=1#f"), { http: "http://h/base/path", ws: "ws://h/base/path/v1/ws" });
  assert.deepEqual(brokerUrls("ws://h:2"), { http: "http://h:2", ws: "ws://h:2/v1/ws" });
  assert.deepEqual(brokerUrls("wss://h"), { http: "https://h", ws: "wss://h/v1/ws" });
  assert.throws(() => brokerUrls("ftp://h"), (e) => e instanceof RewindError && e.code === "bad_url");
  for (const bad of ["127.0.0.1:7070", "", "h:1", "//h"]) {
    assert.throws(() => brokerUrls(bad), (e) => e instanceof RewindError && e.code === "bad_url", bad);
  }
});

test("connect rejects a bad URL with bad_url, and never throws", async () => {
  for (const bad of ["127.0.0.1:7070", "", "ftp://h"]) {
    let promise;
    assert.doesNotThrow(() => {
      promise = connect(bad);
    }, bad);
    await assert.rejects(promise, (e) => e instanceof RewindError && e.code === "bad_url", bad);
  }
});

test("positions: offsets, earliest, latest; nothing else", () => {
  for (const ok of [0, 7, "earliest", "latest", Number.MAX_SAFE_INTEGER]) assert.equal(checkPosition(ok), ok);
  for (const bad of [-1, 1.5, "soon", null, undefined, NaN, 2 ** 60]) {
    assert.throws(() => checkPosition(bad), (e) => e.code === "bad_position", String(bad));
  }
});

test("the cursor drops duplicates, reports holes, and follows truncation", () => {
  const c = new Cursor("earliest");
  assert.equal(c.position(), "earliest");
  assert.equal(c.openEpoch(), null);
  c.opened(5);
  c.epochSeen("aaaaaaaaaaaaaaaa");
  assert.equal(c.position(), 5);
  assert.deepEqual(c.take(5), { kind: "ok", gap: null });
  assert.deepEqual(c.take(5), { kind: "duplicate" });
  assert.deepEqual(c.take(4), { kind: "duplicate" });
  assert.deepEqual(c.take(9), { kind: "ok", gap: { from: 6, to: 9 } });
  assert.equal(c.position(), 10);
  assert.equal(c.openEpoch(), "aaaaaaaaaaaaaaaa");
  c.opened(0); // a later `opened` does not move a known position
  assert.equal(c.position(), 10);
  c.truncated(20);
  assert.deepEqual(c.take(20), { kind: "ok", gap: null });
  assert.equal(c.epochSeen("aaaaaaaaaaaaaaaa"), false);
  assert.equal(c.epochSeen("bbbbbbbbbbbbbbbb"), true);
});

test("frames: bin: true takes the next binary frame; a text frame instead is reported", () => {
  const r = new FrameReader();
  assert.deepEqual(r.push('{"t":"pong"}'), [{ t: "pong" }]);
  assert.deepEqual(r.push('{"t":"event","ns":"a","offset":1,"bin":true}'), []);
  const [ev] = r.push(new Uint8Array([0, 255, 10]).buffer);
  assert.deepEqual([...ev.data], [0, 255, 10]);
  assert.ok(ev.data instanceof Uint8Array);
  assert.deepEqual(r.push(new Uint8Array([1])), [], "a binary frame nothing announced is dropped");
  r.push('{"t":"event","ns":"a","offset":2,"bin":true}');
  const out = r.push('{"t":"ping"}');
  assert.equal(out[0].code, "bad_frame");
  assert.deepEqual(out[1], { t: "ping" });
  assert.deepEqual(r.push("not json"), []);
  assert.deepEqual(r.push("[1]"), []);
  assert.deepEqual(r.push('{"t":1}'), []);
});

test("base64 to bytes", () => {
  assert.deepEqual([...fromBase64("AP8K")], [0, 255, 10]);
  assert.deepEqual([...fromBase64("")], []);
});

/** A WebSocket the test plays the broker for: it records what the client sends. */
function fakeSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      queueMicrotask(() => {
        this.readyState = 1;
        this.onopen?.();
      });
    }
    send(m) {
      this.sent.push(typeof m === "string" ? JSON.parse(m) : m);
    }
    close() {
      if (this.readyState === 3) return;
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code: 1000 }));
    }
    frame(f) {
      this.onmessage?.({ data: JSON.stringify(f) });
    }
  }
  return { FakeWebSocket, sockets };
}

const EPOCH = "0123456789abcdef";
const settle = () => new Promise((r) => setTimeout(r, 10));

test("a hole in the offsets is a gap, an offset twice is dropped, an unencodable event is a gap of one", async () => {
  const { FakeWebSocket, sockets } = fakeSocket();
  const client = await connect("http://127.0.0.1:9", { WebSocket: FakeWebSocket, fetch: () => Promise.reject(new Error("no HTTP here")) });
  const items = [];
  client.subscribe("n", { from: 0 }, {
    onEvent: (e) => items.push(["event", e.offset]),
    onGap: (g) => items.push(["gap", g.from, g.to]),
    onEpoch: (e) => items.push(["epoch", e]),
  });
  const ws = sockets[0];
  assert.equal(ws.protocol, "rewind.v1.json");
  assert.deepEqual(ws.sent[0], { t: "open", ns: "n", from: 0, credit: 256 });
  ws.frame({ t: "opened", ns: "n", epoch: EPOCH, from: 0, earliest: 0, next: 9 });
  for (const offset of [0, 1, 1, 0, 4]) ws.frame({ t: "event", ns: "n", offset, event: "e", ts: 1, data: null });
  ws.frame({ t: "error", ns: "n", offset: 5, code: "internal", message: "cannot encode" });
  ws.frame({ t: "event", ns: "n", offset: 6, event: "e", ts: 1, data: null });
  await settle();
  assert.deepEqual(items, [["epoch", EPOCH], ["event", 0], ["event", 1], ["gap", 2, 4], ["event", 4], ["gap", 5, 6], ["event", 6]]);
  client.close();
});

test("credit goes back as async handlers finish, a quarter of the buffer at a time", async () => {
  const { FakeWebSocket, sockets } = fakeSocket();
  const client = await connect("http://127.0.0.1:9", { WebSocket: FakeWebSocket, buffer: 8 });
  const release = [];
  const handled = [];
  client.subscribe("n", { from: 0 }, {
    onEvent: (e) => new Promise((r) => release.push(() => { handled.push(e.offset); r(); })),
  });
  const ws = sockets[0];
  assert.equal(ws.sent[0].credit, 8);
  ws.frame({ t: "opened", ns: "n", epoch: EPOCH, from: 0, earliest: 0, next: 8 });
  for (let o = 0; o < 8; o++) ws.frame({ t: "event", ns: "n", offset: o, event: "e", ts: 1, data: o });
  await settle();
  assert.equal(release.length, 1, "the second handler waits for the first");
  release[0]();
  await settle();
  assert.deepEqual(ws.sent.filter((f) => f.t === "credit"), [], "one handled: no credit yet");
  release[1]();
  await settle();
  assert.deepEqual(ws.sent.filter((f) => f.t === "credit"), [{ t: "credit", ns: "n", n: 2 }]);
  assert.deepEqual(handled, [0, 1]);
  client.close();
});

test("a reconnect opens every subscription at its next offset with its epoch, and sends unanswered publishes again with their keys", async () => {
  const { FakeWebSocket, sockets } = fakeSocket();
  const client = await connect("http://127.0.0.1:9", { WebSocket: FakeWebSocket, backoffMin: 1, backoffMax: 2, stableAfter: 0 });
  client.subscribe("a", { from: "earliest" }, {});
  client.subscribe("b", { from: "latest" }, {});
  const ws = sockets[0];
  ws.frame({ t: "opened", ns: "a", epoch: EPOCH, from: 3, earliest: 3, next: 5 });
  ws.frame({ t: "event", ns: "a", offset: 3, event: "e", ts: 1, data: 1 });
  const published = client.publish("a", "p", { x: 1 }, { key: "k" });
  const first = ws.sent.find((f) => f.t === "publish");
  assert.equal(first.key, "k");
  ws.close();
  while (sockets.length < 2 || sockets[1].readyState !== 1) await settle();
  await settle();
  const opens = sockets[1].sent.filter((f) => f.t === "open");
  assert.deepEqual(opens, [
    { t: "open", ns: "a", from: 4, credit: 256, epoch: EPOCH },
    { t: "open", ns: "b", from: "latest", credit: 256 },
  ]);
  const again = sockets[1].sent.find((f) => f.t === "publish");
  assert.deepEqual(again, first);
  sockets[1].frame({ t: "published", id: first.id, ns: "a", offset: 5 });
  assert.equal(await published, 5);
  client.close();
});

test("silence past the liveness timeout counts as a dead link", async () => {
  const { FakeWebSocket, sockets } = fakeSocket();
  const client = await connect("http://127.0.0.1:9", { WebSocket: FakeWebSocket, liveness: 30, backoffMin: 1, stableAfter: 0 });
  while (sockets.length < 2) await settle();
  assert.equal(sockets[0].readyState, 3);
  client.close();
});

test("a refused publish rejects with the broker's code; later ones go on", async () => {
  const { FakeWebSocket, sockets } = fakeSocket();
  const client = await connect("http://127.0.0.1:9", { WebSocket: FakeWebSocket });
  const bad = client.publish("bad..name", "e", 1);
  const good = client.publish("ok", "e", new Uint8Array([7]));
  const ws = sockets[0];
  const [p1, p2] = ws.sent.filter((f) => f.t === "publish");
  assert.equal(p2.bin, true);
  assert.deepEqual([...ws.sent.at(-1)], [7]);
  ws.frame({ t: "error", id: p1.id, code: "bad_namespace", message: "no" });
  ws.frame({ t: "published", id: p2.id, ns: "ok", offset: 0 });
  await assert.rejects(bad, (e) => e instanceof RewindError && e.code === "bad_namespace");
  assert.equal(await good, 0);
  client.close();
  await assert.rejects(client.publish("ok", "e", 1), (e) => e.code === "closed");
});

test("subscribing again after close: the old subscription's frames up to its closed are not the new one's", async () => {
  const { FakeWebSocket, sockets } = fakeSocket();
  const client = await connect("http://127.0.0.1:9", { WebSocket: FakeWebSocket });
  const old = [];
  const now = [];
  const first = client.subscribe("n", { from: 0 }, { onEvent: (e) => old.push(e.offset), onEnded: (e) => old.push(e.reason) });
  const ws = sockets[0];
  ws.frame({ t: "opened", ns: "n", epoch: EPOCH, from: 0, earliest: 0, next: 9 });
  ws.frame({ t: "event", ns: "n", offset: 0, event: "e", ts: 1, data: null });
  await settle();
  first.close();
  client.subscribe("n", { from: 5 }, { onEvent: (e) => now.push(e.offset), onEnded: (e) => now.push(e.reason) });
  assert.deepEqual(ws.sent.slice(-2).map((f) => f.t), ["close", "open"]);
  ws.frame({ t: "event", ns: "n", offset: 1, event: "e", ts: 1, data: null });
  ws.frame({ t: "closed", ns: "n" });
  ws.frame({ t: "opened", ns: "n", epoch: EPOCH, from: 5, earliest: 0, next: 9 });
  ws.frame({ t: "event", ns: "n", offset: 5, event: "e", ts: 1, data: null });
  await settle();
  assert.deepEqual(old, [0]);
  assert.deepEqual(now, [5]);
  client.close();
});
