// Declarations of rewind.js, the browser (and Node >= 20) client of the rewind broker.
// The guide is docs/browser.md; the wire protocol is docs/protocol.md.

/** Where a subscription starts: an offset (deliver offsets >= it), the oldest retained event, or only new ones. */
export type Position = number | "earliest" | "latest";

/** A JSON value as `JSON.parse` gives it (integers beyond 2^53 lose precision). */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Bytes a publish takes. */
export type Bytes = Uint8Array | ArrayBuffer | ArrayBufferView;

export interface Options {
  /** "auto" (WebSocket, long-poll when it fails), "websocket" only, or "longpoll" only. Default "auto". */
  transport?: "auto" | "websocket" | "longpoll";
  /** ms, the first wait before reconnecting; doubles up to backoffMax; each wait scaled by 0.5–1.5. Default 100. */
  backoffMin?: number;
  /** ms, the longest wait between reconnects. Default 10000. */
  backoffMax?: number;
  /** ms of silence on the WebSocket that count as a dead link. Default 45000 (the broker's ping interval + timeout). */
  liveness?: number;
  /** ms a WebSocket may take to open before it counts as failed. Default 10000. */
  openTimeout?: number;
  /** Events per subscription the broker may send ahead of the handlers (its credit). Default 256. */
  buffer?: number;
  /** WebSocket failures in a row (not opened, or cut within stableAfter) before long-polling. Default 2. */
  fallbackAfter?: number;
  /** ms a WebSocket must stay up to count as working. Default 3000. */
  stableAfter?: number;
  /** ms, the first wait before trying the WebSocket again while long-polling; doubles to probeMax. Default 1000. */
  probeMin?: number;
  /** ms, the longest wait between such tries. Default 30000. */
  probeMax?: number;
  /** s a long-poll is held by the broker (at most its max_wait_secs, 60). Default 25. */
  pollWait?: number;
  /** Events per long-poll page (at most the broker's max_read_events). Default 100. */
  pollLimit?: number;
  /** Long-polls held at once; the other subscriptions poll without a wait (browsers allow 6 connections per host). Default 4. */
  pollHeld?: number;
  /** ms between the short polls of the subscriptions past pollHeld, while they find nothing. Default 1000. */
  pollEvery?: number;
  /** The WebSocket URL, when it is not the broker URL's `/v1/ws`. */
  wsUrl?: string | null;
  /**
   * A token (JWT) for a broker that checks them: a string, or a function (may be async)
   * called for every connection, request and refresh, so it can hand out a fresh one.
   * Sent as `?token=` on the WebSocket and `Authorization: Bearer` on HTTP; on the
   * broker's `auth_expiring` the function is called and its token sent as `auth`.
   * Default null.
   */
  token?: string | (() => string | Promise<string>) | null;
  /** The WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: unknown;
  /** The fetch function (default `globalThis.fetch`). */
  fetch?: typeof fetch;
}

export declare const DEFAULTS: Readonly<Required<Omit<Options, "WebSocket" | "fetch">>>;

/** One event of a namespace. */
export interface RewindEvent {
  ns: string;
  /** Its offset in the namespace (unique, +1 per event). */
  offset: number;
  /** Its name. */
  event: string;
  /** Broker time, ms since the Unix epoch. */
  ts: number;
  /** Its key, if it was published with one. */
  key?: string;
  /** A JSON value, or the bytes of a byte payload. */
  data: Json | Uint8Array;
}

export interface Truncation {
  /** The offset asked for. */
  requested: number | Position;
  /** The first offset delivered instead. */
  from: number;
  /** "retention" (offsets below earliest are gone) or "epoch" (the log was re-created). */
  reason: "retention" | "epoch";
}

export interface Gap {
  /** The first offset not delivered. */
  from: number;
  /** The offset delivery goes on at. */
  to: number;
  reason: string;
}

export interface Handlers {
  /** Each event, in offset order, once; the next waits until a returned promise settles. */
  onEvent?: (ev: RewindEvent) => void | Promise<void>;
  /** The namespace's epoch, when first learned or changed. */
  onEpoch?: (epoch: string) => void | Promise<void>;
  /** Offsets skipped, announced by the broker. */
  onTruncated?: (t: Truncation) => void | Promise<void>;
  /** Offsets neither delivered nor announced. */
  onGap?: (g: Gap) => void | Promise<void>;
  /** The last call: reason "deleted" when the namespace was deleted, else the refusal ("not_found: …"). */
  onEnded?: (e: { reason: string }) => void | Promise<void>;
}

export interface SubscribeOptions {
  /** Default "latest". */
  from?: Position;
  /** The epoch seen before, when resuming from an offset. */
  epoch?: string | null;
}

export declare class Subscription {
  readonly ns: string;
  /** Where to resume later: the next offset wanted and the epoch seen (null until known). */
  readonly resume: { next: number | null; epoch: string | null };
  /** Stops it on the broker; its handlers get nothing more. */
  close(): void;
}

export interface PublishOptions {
  /** Stored with the event (at most 1024 bytes). */
  key?: string;
  /** 1–256 visible ASCII characters; default a key of the client's own. */
  idempotencyKey?: string;
}

export type State = "connecting" | "open" | "closed";
export type TransportName = "websocket" | "longpoll" | null;

export declare class RewindError extends Error {
  /** The broker's error code (docs/protocol.md) or "closed", "bad_url", "bad_position", "already_open", "bad_data". */
  readonly code: string;
  /** The HTTP status, when the refusal came over HTTP. */
  readonly status?: number;
}

export declare class Client {
  readonly state: State;
  readonly transport: TransportName;
  subscribe(ns: string, options?: SubscribeOptions, handlers?: Handlers): Subscription;
  /**
   * Resolves to the event's offset once it is durable; rejects with a RewindError when
   * refused, and with code "bad_data" (nothing sent, nothing kept) when `data` cannot be
   * serialised as JSON (a BigInt, a cyclic object, a function).
   */
  publish(ns: string, event: string, data?: Json | Bytes, options?: PublishOptions): Promise<number>;
  on(type: "state", fn: (s: { state: State; transport: TransportName }) => void): () => void;
  on(type: "error", fn: (e: { ns: string; error: unknown }) => void): () => void;
  close(): void;
}

/** Connects; resolves once a transport works, then reconnects for ever until close(). */
export declare function connect(url: string, options?: Options): Promise<Client>;

/** Waits that double from min to max (ms). */
export declare class Backoff {
  constructor(min: number, max: number);
  next(): number;
  reset(): void;
}
/** `ms` scaled by a random factor in [0.5, 1.5). */
export declare function jitter(ms: number, random?: () => number): number;
/** The HTTP base URL and WebSocket URL of a broker URL. */
export declare function brokerUrls(url: string): { http: string; ws: string };
export declare function checkPosition(from: Position): Position;
export declare function fromBase64(text: string): Uint8Array;

/** A subscription's place in its stream (exported for tests). */
export declare class Cursor {
  constructor(from: Position, epoch?: string | null);
  next: number | null;
  epoch: string | null;
  position(): Position;
  take(offset: number): { kind: "duplicate" } | { kind: "ok"; gap: { from: number; to: number } | null };
}

/** Joins `rewind.v1.json` text frames with their binary payloads (exported for tests). */
export declare class FrameReader {
  push(message: string | ArrayBuffer | Uint8Array): Array<Record<string, unknown>>;
}
