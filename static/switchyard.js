// switchyard.js — a small browser client for Switchyard (ES module, no dependencies; served at
// /static/switchyard.js).
//
//   import { Switchyard, follow } from "/static/switchyard.js";
//   const sy = new Switchyard({ apiKey });              // or no key: see "tokens" below
//   const submitted = await sy.submit({ model: "chat-default", idempotency_key: crypto.randomUUID(),
//                                       messages: [{ role: "user", content: "hi" }] });
//   const f = follow({ ...sy.target(submitted), onText: (t) => out.append(t), onDone: (record) => … });
//   await f.done;                                       // the final execution record
//
// Every event of an execution has a seq (1, 2, 3 …). A follower remembers the last one it
// delivered; after a dropped connection it reconnects with backoff (0.5 s doubling to 10 s) and
// resumes after that seq — over the WebSocket channel (`join` with `after`) or over SSE
// (`Last-Event-ID`) — so no event is delivered twice and none is skipped.
//
// Tokens: a submit answer's `ws_token` opens one WebSocket once. To reconnect, the follower
// needs a fresh one: pass `refreshToken`, an async function returning one. With the API key in
// the page (operators' tools), `Switchyard.freshToken(body)` gets one by sending the same submit
// again — same body, same idempotency key — which answers with the original execution and a
// new token (never a second execution). A browser without the key asks its own backend to do
// that. With `apiKey` given to `follow`, the socket authenticates with the key instead.

const TERMINAL = new Set(["completed", "failed", "cancelled", "expired"]);
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10_000;

/** REST calls with an API key. */
export class Switchyard {
  constructor({ baseUrl = globalThis.location ? location.origin : "", apiKey } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.apiKey = apiKey;
  }

  async request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(this.baseUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    const data = text ? JSON.parse(text) : null;
    if (!res.ok) {
      const err = new Error(data?.error?.message || `${method} ${path}: HTTP ${res.status}`);
      err.status = res.status;
      err.code = data?.error?.code;
      err.retryAfter = Number(res.headers.get("retry-after")) || undefined;
      throw err;
    }
    return data;
  }

  /** `POST /v1/executions`: the 202 answer (id, websocket_channel, ws_token, …). */
  submit(body) {
    return this.request("POST", "/v1/executions", body);
  }

  /** A fresh one-time WebSocket token for an execution already submitted with `body`. */
  async freshToken(body) {
    return (await this.submit(body)).ws_token;
  }

  execution(id) {
    return this.request("GET", `/v1/executions/${encodeURIComponent(id)}`);
  }

  cancel(id) {
    return this.request("POST", `/v1/executions/${encodeURIComponent(id)}/cancel`, {});
  }

  /** What `follow` needs to follow a submitted execution with this client's key. */
  target(submitted) {
    return {
      baseUrl: this.baseUrl,
      apiKey: this.apiKey,
      executionId: submitted.id,
      channel: submitted.websocket_channel,
      token: submitted.ws_token,
    };
  }
}

function wsUrl(baseUrl, query) {
  const base = new URL(baseUrl || location.origin);
  base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
  base.pathname = base.pathname.replace(/\/$/, "") + "/v1/ws";
  base.search = new URLSearchParams(query).toString();
  return base.toString();
}

/**
 * A WebSocket that stays connected: reconnects with backoff, rejoins every channel it joined
 * after the last seq delivered on it, and drops frames it already delivered.
 * `auth()` answers the query for each (re)connection: `{ api_key }` or `{ token }`.
 */
export class ChannelSocket {
  constructor({ baseUrl, auth, onState = () => {}, onFatal = () => {} }) {
    this.baseUrl = baseUrl;
    this.auth = auth;
    this.onState = onState;
    this.onFatal = onFatal;
    this.channels = new Map(); // channel -> { lastSeq, onFrame }
    this.backoff = BACKOFF_FIRST_MS;
    this.closed = false;
    this.ws = null;
    this.connect();
  }

  async connect() {
    if (this.closed) return;
    this.onState("connecting");
    let query;
    try {
      query = await this.auth();
    } catch (err) {
      return this.fail(`no credentials to reconnect: ${err.message}`);
    }
    if (this.closed) return;
    const ws = new WebSocket(wsUrl(this.baseUrl, query));
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = BACKOFF_FIRST_MS;
      this.onState("live");
      for (const [channel, c] of this.channels) this.sendJoin(channel, c);
    };
    ws.onmessage = (msg) => {
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      const c = this.channels.get(frame.channel);
      if (!c) {
        if (frame.event === "error") console.warn("switchyard:", frame.data);
        return;
      }
      if (frame.event === "lagged") {
        // An execution channel continues from its log by itself; a feed without seqs (the
        // project's status notes) lost notes, and its reader is told so it can catch up.
        return c.onFrame(frame);
      }
      if (typeof frame.seq === "number") {
        if (frame.seq <= c.lastSeq) return;
        c.lastSeq = frame.seq;
      }
      c.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.closed) return;
      this.onState("off");
      // 4401: the key or token was revoked or refused; 1008: policy (a bad token).
      if (ev.code === 4401 || ev.code === 1008) return this.fail(`refused (${ev.code} ${ev.reason})`);
      const delay = this.backoff;
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
      setTimeout(() => this.connect(), delay);
    };
  }

  fail(reason) {
    this.closed = true;
    this.onState("off");
    this.onFatal(new Error(reason));
  }

  sendJoin(channel, c) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ action: "join", channel, after: c.lastSeq }));
    }
  }

  /** Joins `channel` from after `after`; `onFrame` gets each new frame once, in order. */
  join(channel, { after = 0, onFrame }) {
    const c = { lastSeq: after, onFrame };
    this.channels.set(channel, c);
    this.sendJoin(channel, c);
    return c;
  }

  leave(channel) {
    if (!this.channels.delete(channel)) return;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ action: "leave", channel }));
    }
  }

  /** Drops the connection (as a network would): the socket reconnects and resumes. */
  drop() {
    if (this.ws) this.ws.close(4000, "dropped by the client");
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close(1000, "done");
    this.ws = null;
  }
}

/** Splits an SSE byte stream into events ({id, event, data}). */
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const ev = { event: "message", data: "" };
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(":")) continue;
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        const val = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
        if (field === "data") ev.data += (ev.data ? "\n" : "") + val;
        else if (field === "event") ev.event = val;
        else if (field === "id") ev.id = val;
      }
      if (ev.data) yield ev;
    }
  }
}

/**
 * Follows one execution to its end, over the WebSocket channel (default) or SSE
 * (`transport: "sse"`, needs `apiKey` and `executionId`). Handlers: `onEvent(frame)` for every
 * event, `onText(delta)`, `onStatus(status)`, `onFailover(data)`, `onDone(record)`,
 * `onError(err)` (only for what reconnecting cannot fix), `onState("connecting"|"live"|"off")`.
 * Returns `{ done, close(), drop(), lastSeq() }`; `done` resolves with the final record.
 */
export function follow(options) {
  const {
    baseUrl = globalThis.location ? location.origin : "",
    apiKey,
    token,
    refreshToken,
    executionId,
    channel,
    transport = "websocket",
    after = 0,
    onEvent = () => {},
    onText = () => {},
    onStatus = () => {},
    onFailover = () => {},
    onDone = () => {},
    onError = () => {},
    onState = () => {},
  } = options;
  let resolve, reject;
  const done = new Promise((ok, no) => {
    resolve = ok;
    reject = no;
  });
  done.catch(() => {}); // a caller that only uses handlers need not handle the promise
  let lastSeq = after;
  let finished = false;
  const deliver = (event, seq, data) => {
    if (finished || !(seq > lastSeq)) return;
    lastSeq = seq;
    const frame = { event, seq, data };
    onEvent(frame);
    if (event === "chunk" && data.delta) onText(data.delta);
    else if (event === "status") onStatus(data.status);
    else if (event === "failover") onFailover(data);
    else if (event === "done") {
      finished = true;
      onDone(data);
      resolve(data);
      stop();
    }
  };
  const fatal = (err) => {
    if (finished) return;
    finished = true;
    onError(err);
    reject(err);
    stop();
  };

  let stop = () => {};
  let drop = () => {};
  if (transport === "sse") {
    if (!apiKey || !executionId) throw new Error("follow over SSE needs apiKey and executionId");
    let controller = null;
    let backoff = BACKOFF_FIRST_MS;
    let stopped = false;
    const run = async () => {
      while (!stopped && !finished) {
        controller = new AbortController();
        onState("connecting");
        try {
          const res = await fetch(
            `${baseUrl.replace(/\/$/, "")}/v1/executions/${encodeURIComponent(executionId)}/events`,
            {
              headers: { Authorization: `Bearer ${apiKey}`, "Last-Event-ID": String(lastSeq), Accept: "text/event-stream" },
              signal: controller.signal,
            }
          );
          if (res.status === 401 || res.status === 403 || res.status === 404) {
            return fatal(new Error(`events: HTTP ${res.status}`));
          }
          if (!res.ok) throw new Error(`events: HTTP ${res.status}`);
          onState("live");
          backoff = BACKOFF_FIRST_MS;
          for await (const ev of sseEvents(res.body)) {
            deliver(ev.event, Number(ev.id), JSON.parse(ev.data));
          }
        } catch (_) {
          // dropped or refused for now: reconnect below
        }
        if (stopped || finished) return;
        onState("off");
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
    };
    run();
    stop = () => {
      stopped = true;
      if (controller) controller.abort();
    };
    drop = () => controller && controller.abort();
  } else {
    if (!channel) throw new Error("follow over the WebSocket channel needs `channel`");
    let unspent = token;
    const auth = async () => {
      if (apiKey) return { api_key: apiKey };
      if (unspent) {
        const t = unspent;
        unspent = null;
        return { token: t };
      }
      if (refreshToken) return { token: await refreshToken() };
      throw new Error("the one-time token is spent and no refreshToken was given");
    };
    const socket = new ChannelSocket({ baseUrl, auth, onState, onFatal: fatal });
    socket.join(channel, {
      after,
      onFrame: (frame) => {
        // Only the log's events carry a seq (not joined, left, lagged or error frames).
        if (typeof frame.seq !== "number") return;
        deliver(frame.event, frame.seq, frame.data || {});
      },
    });
    stop = () => socket.close();
    drop = () => socket.drop();
  }
  return { done, close: () => stop(), drop: () => drop(), lastSeq: () => lastSeq };
}

export function isTerminal(status) {
  return TERMINAL.has(status);
}
