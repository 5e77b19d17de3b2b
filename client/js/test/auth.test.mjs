// rewind.js's `token` option against a broker that checks tokens (HS256). Run by
// tests/tests/js_client.rs, which starts that broker with a 2 s expiry warning and no
// leeway and passes REWIND_AUTH_URL and REWIND_AUTH_SECRET; tokens are minted here.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { connect, RewindError } from "../rewind.js";

const URL_ = process.env.REWIND_AUTH_URL;
const SECRET = process.env.REWIND_AUTH_SECRET;

function need() {
  assert.ok(URL_ && SECRET, "run these through `cargo test -p rewind-tests --test js_client` (REWIND_AUTH_URL and REWIND_AUTH_SECRET are unset)");
}

const clients = new Set();
afterEach(() => {
  for (const client of clients) client.close();
  clients.clear();
});

/** An HS256 JWT (RFC 7519) of `claims`, valid for `secs` seconds. */
function jwt(claims, secs = 3600) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: "js", exp: Math.floor(Date.now() / 1000) + secs, ...claims })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

async function until(cond, what, ms = 20000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const FAST = { backoffMin: 20, backoffMax: 200, probeMin: 50, probeMax: 300, pollWait: 2, stableAfter: 500, openTimeout: 1000 };
const ALLOW = { publish: ["js.*"], subscribe: ["js.*"] };

for (const transport of ["websocket", "longpoll"]) {
  test(`${transport}: a token string publishes and subscribes; a namespace it does not allow is forbidden`, async () => {
    need();
    const client = await connect(URL_, { ...FAST, transport, token: jwt(ALLOW) });
    clients.add(client);
    const ns = `js.${transport}.${process.pid}`;
    assert.equal(await client.publish(ns, "e", 1), 0);
    const events = [];
    client.subscribe(ns, { from: "earliest" }, { onEvent: (e) => events.push(e) });
    await until(() => events.length === 1, "the event");
    await assert.rejects(client.publish("elsewhere", "e", 1), (e) => e instanceof RewindError && e.code === "forbidden");
    // Nothing was created by the refused publish.
    const admin = jwt({ admin: true });
    const res = await fetch(`${URL_}/v1/namespaces/elsewhere`, { headers: { authorization: `Bearer ${admin}` } });
    assert.equal(res.status, 404);
  });
}

test("websocket: a token function refreshes the connection in place before each token expires", async () => {
  need();
  let calls = 0;
  const token = async () => {
    calls += 1;
    return jwt(ALLOW, 3);
  };
  const client = await connect(URL_, { ...FAST, transport: "websocket", token });
  clients.add(client);
  const states = [];
  client.on("state", (s) => states.push(s.state));
  const ns = `js.refresh.${process.pid}`;
  const events = [];
  await client.publish(ns, "e", 0);
  client.subscribe(ns, { from: "earliest" }, { onEvent: (e) => events.push(e) });
  // Each token lives 3 s and is warned 2 s ahead: three refreshes outlive the first token.
  await until(() => calls >= 4, "three refreshes");
  assert.equal(await client.publish(ns, "e", 1), 1);
  await until(() => events.length === 2, "both events");
  assert.deepEqual(states, [], "the connection was never lost");
  assert.equal(client.transport, "websocket");
});

test("a connection whose token cannot be refreshed is closed at expiry and reconnects with a fresh one", async () => {
  need();
  let calls = 0;
  // The first token expires in 2 s; the refresh offered for it fails, later ones work.
  const token = () => {
    calls += 1;
    if (calls === 2) throw new Error("the issuer is down");
    return jwt(ALLOW, calls === 1 ? 2 : 3600);
  };
  const client = await connect(URL_, { ...FAST, transport: "websocket", token });
  clients.add(client);
  const errors = [];
  client.on("error", (e) => errors.push(e.error.message));
  const states = [];
  client.on("state", (s) => states.push(s.state));
  await until(() => states.includes("connecting") && client.state === "open", "a reconnect after the 4001 close");
  assert.deepEqual(errors, ["the issuer is down"]);
  const ns = `js.expired.${process.pid}`;
  assert.equal(await client.publish(ns, "e", 1), 0);
});

test("a token function that gives back the same token does not loop on auth_expiring", async () => {
  need();
  let calls = 0;
  // Inside the 2 s warning window from the start: warned at once, and each refresh
  // offers the very same token.
  const fixed = jwt(ALLOW, 2);
  const token = () => {
    calls += 1;
    return fixed;
  };
  const client = await connect(URL_, { ...FAST, transport: "websocket", token, backoffMin: 5000, backoffMax: 5000 });
  clients.add(client);
  const states = [];
  client.on("state", (s) => states.push(s.state));
  await until(() => states.includes("connecting"), "the close at expiry");
  // The dial and one refresh (the identical token is not sent); a loop would have called
  // the function on every auth_expiring until expiry.
  assert.ok(calls <= 2, `${calls} calls of the token function`);
});
