// Switchyard dashboard: plain DOM, one WebSocket (through switchyard.js), no libraries.
//
// Everything that comes from the server is rendered with textContent / createTextNode, never as
// HTML, so provider text, prompts and raw logs cannot inject markup.
import { ChannelSocket } from "/static/switchyard.js";

(() => {
  const KEY_STORAGE = "switchyard.api_key";
  const THEME_STORAGE = "switchyard.theme";
  const MAX_ROWS = 200;
  // A fallback: the health panel refreshes when the project's executions end (see onFrame).
  const HEALTH_EVERY_MS = 30000;
  const ANALYTICS_EVERY_MS = 15000;
  const TERMINAL = new Set(["completed", "failed", "cancelled", "expired"]);

  const $ = (id) => document.getElementById(id);

  /** A DOM element with attributes and children (strings become text nodes). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "dataset") Object.assign(el.dataset, value);
      else if (name === "className") el.className = value;
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const state = {
    key: null,
    me: null,
    socket: null,
    signedOut: false,
    rows: new Map(), // execution id → { tr, status }
    selected: null, // { id, channel, lastSeq, text }
    timers: [],
    analyticsPending: null,
    connectedOnce: false,
  };

  // ---- HTTP ----

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, options = {}) {
    const headers = { authorization: `Bearer ${state.key}` };
    if (options.body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    const text = await res.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = null;
    }
    if (!res.ok) {
      const err = (body && body.error) || {};
      throw new ApiError(res.status, err.code || "http_" + res.status, err.message || res.statusText);
    }
    return body;
  }

  // ---- formatting ----

  const pad = (n) => String(n).padStart(2, "0");
  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "" : `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  const ms = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)} ms`);
  const shortId = (id) => (id.length > 18 ? id.slice(0, 18) + "…" : id);

  function statusBadge(status) {
    return h("span", { className: "status", dataset: { status } }, status);
  }

  // ---- sign in / out ----

  async function signIn(key) {
    state.key = key;
    state.me = await api("/v1/me");
    sessionStorage.setItem(KEY_STORAGE, key);
    state.signedOut = false;
    $("signin").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
    $("socket-state").hidden = false;
    $("whoami").textContent = `project ${state.me.project_id} · ${state.me.key_id} · ${state.me.role}`;
    // The list first, then the live feed: notes that cross the list only move statuses forward.
    await Promise.all([loadModels(), loadExecutions()]).catch((err) => {
      $("submit-status").textContent = `could not load: ${err.message}`;
    });
    connect();
    loadKeys();
    refreshHealth();
    refreshAnalytics();
    state.timers.push(setInterval(refreshHealth, HEALTH_EVERY_MS));
    state.timers.push(setInterval(tickDurations, 1000));
    state.timers.push(setInterval(refreshAnalytics, ANALYTICS_EVERY_MS));
    const fromHash = decodeURIComponent(location.hash.slice(1));
    if (fromHash.startsWith("exec_")) select(fromHash);
  }

  function signOut(message) {
    state.signedOut = true;
    sessionStorage.removeItem(KEY_STORAGE);
    state.timers.forEach(clearInterval);
    state.timers = [];
    if (state.socket) state.socket.close();
    state.socket = null;
    $("keys").hidden = true;
    $("key-secret").hidden = true;
    state.key = null;
    state.connectedOnce = false;
    $("dashboard").hidden = true;
    $("sign-out").hidden = true;
    $("socket-state").hidden = true;
    $("signin").hidden = false;
    $("whoami").textContent = "";
    $("signin-error").textContent = message || "";
    state.rows.clear();
    document.querySelector("#executions tbody").replaceChildren();
    state.selected = null;
    history.replaceState(null, "", location.pathname);
  }

  // ---- WebSocket: the project feed and the selected execution's channel ----

  function setSocketState(s) {
    const el = $("socket-state");
    el.dataset.state = s;
    el.textContent = { live: "live", connecting: "connecting…", off: "offline" }[s];
  }

  // One socket for the project feed and the selected execution's channel (switchyard.js):
  // it reconnects with backoff and rejoins each channel after the last seq it delivered.
  function connect() {
    state.socket = new ChannelSocket({
      baseUrl: location.origin,
      auth: async () => ({ api_key: state.key }),
      onState: (s) => {
        setSocketState(s);
        if (s !== "live") return;
        // Status notes are live only: catch up on what changed while the socket was down.
        if (state.connectedOnce) loadExecutions().catch(() => {});
        state.connectedOnce = true;
      },
      onFatal: () => !state.signedOut && signOut("The server refused this key on the live connection."),
    });
    state.socket.join(`project:${state.me.project_id}`, { onFrame });
  }

  function onFrame(frame) {
    if (frame.event === "error") {
      console.warn("websocket error frame", frame.data);
      return;
    }
    const project = `project:${state.me.project_id}`;
    if (frame.channel === project && frame.event === "lagged") {
      loadExecutions().catch(() => {}); // notes were dropped: read the list again
      return;
    }
    if (frame.channel === project && frame.event === "status") {
      const filter = $("filter-status").value;
      if (filter && frame.data.status !== filter && !state.rows.has(frame.data.execution_id)) return;
      upsertRow(frame.data, true);
      if (TERMINAL.has(frame.data.status)) {
        scheduleAnalytics(1500);
        // An attempt just ended somewhere: the routes' health and headroom may have moved.
        scheduleHealth(300);
      }
      return;
    }
    const sel = state.selected;
    if (sel && frame.channel === sel.channel) onExecutionEvent(sel, frame);
  }

  // ---- the live execution list ----

  const rank = (status) => (TERMINAL.has(status) ? 2 : status === "processing" ? 1 : 0);

  function upsertRow(note, live) {
    const existing = state.rows.get(note.execution_id);
    if (existing) {
      // Notes may cross the initial list: a status only ever moves forward.
      if (rank(note.status) >= rank(existing.status)) {
        existing.status = note.status;
        existing.cells.status.replaceChildren(statusBadge(note.status));
        if (TERMINAL.has(note.status)) refreshRow(note.execution_id);
      }
      return;
    }
    const cells = {
      status: h("td", {}, statusBadge(note.status)),
      prompt: h("td", { className: "col-prompt" }, ""),
      duration: h("td", { className: "col-duration" }, "–"),
      tokens: h("td", { className: "col-tokens" }, "–"),
      error: h("td", { className: "col-error" }, ""),
    };
    const tr = h(
      "tr",
      { tabindex: "0", dataset: { id: note.execution_id, model: note.model }, className: live ? "fresh" : null },
      h("td", {}, clock(note.at)),
      h("td", { className: "mono", title: note.execution_id }, shortId(note.execution_id)),
      h("td", {}, note.model),
      cells.status,
      cells.prompt,
      cells.duration,
      cells.tokens,
      cells.error
    );
    if (state.selected && state.selected.id === note.execution_id) tr.setAttribute("aria-selected", "true");
    tr.addEventListener("click", () => select(note.execution_id));
    tr.addEventListener("keydown", (e) => e.key === "Enter" && select(note.execution_id));
    // Newest first, by time: rows caught up after a reconnect land where they belong.
    const at = Date.parse(note.at) || Date.now();
    tr.dataset.at = String(at);
    const tbody = document.querySelector("#executions tbody");
    const before = Array.from(tbody.children).find((row) => Number(row.dataset.at) < at);
    tbody.insertBefore(tr, before || null);
    const row = { tr, cells, status: note.status, at };
    state.rows.set(note.execution_id, row);
    if (note.record) fillRow(row, note.record);
    applyFilter(tr);
    while (tbody.children.length > MAX_ROWS) {
      const last = tbody.lastElementChild;
      state.rows.delete(last.dataset.id);
      last.remove();
    }
    $("executions-empty").hidden = true;
  }

  /** Duration, tokens, error and a failover mark from an execution record. */
  function fillRow(row, e) {
    row.record = e;
    if (rank(e.status) >= rank(row.status)) {
      row.status = e.status;
      const mark = failedOver(e) ? h("span", { className: "failover-mark", title: "failed over" }, "↪") : null;
      row.cells.status.replaceChildren(statusBadge(e.status), mark || "");
    }
    if (typeof e.duration_ms === "number") row.cells.duration.textContent = ms(e.duration_ms);
    if (e.usage) row.cells.tokens.textContent = `${e.usage.prompt_tokens} + ${e.usage.completion_tokens}`;
    row.cells.error.textContent = e.error ? e.error.code : "";
    if (e.prompt_excerpt) {
      row.cells.prompt.textContent = e.prompt_excerpt;
      row.cells.prompt.title = e.prompt_excerpt;
      row.tr.dataset.prompt = e.prompt_excerpt;
    }
    row.tr.dataset.error = e.error ? e.error.code : "";
    applyFilter(row.tr);
  }

  const failedOver = (e) => (e.attempts || []).some((a, i, all) => i > 0 && (a.provider !== all[i - 1].provider || all[i - 1].chunks_delivered > 0));

  async function refreshRow(id) {
    try {
      const row = state.rows.get(id);
      if (row) fillRow(row, await api(`/v1/executions/${encodeURIComponent(id)}`));
    } catch (_) {
      /* the next list load fills it */
    }
  }

  /** Running rows count their duration up, once a second. */
  function tickDurations() {
    const now = Date.now();
    for (const row of state.rows.values()) {
      if (!TERMINAL.has(row.status) && !row.record?.duration_ms) {
        row.cells.duration.textContent = `${((now - row.at) / 1000).toFixed(0)} s…`;
      }
    }
  }

  /** The text filter, on what a row shows: id, model, error code. */
  function applyFilter(tr) {
    const needle = $("filter-text").value.trim().toLowerCase();
    const hay = `${tr.dataset.id} ${tr.dataset.model || ""} ${tr.dataset.error || ""} ${tr.dataset.prompt || ""}`.toLowerCase();
    tr.hidden = needle !== "" && !hay.includes(needle);
  }

  /** The first page (or, with `more`, the next one) under the status filter. */
  async function loadExecutions(more = false) {
    const status = $("filter-status").value;
    const params = new URLSearchParams({ limit: "50" });
    if (status) params.set("status", status);
    if (more && state.nextCursor) params.set("cursor", state.nextCursor);
    const page = await api(`/v1/executions?${params}`);
    for (const e of page.data) {
      upsertRow({ execution_id: e.id, model: e.model, status: e.status, at: e.created_at, record: e }, false);
    }
    state.nextCursor = page.next_cursor || null;
    $("load-more").hidden = !state.nextCursor;
  }

  function reloadExecutions() {
    state.rows.clear();
    document.querySelector("#executions tbody").replaceChildren();
    state.nextCursor = null;
    loadExecutions().catch((err) => ($("submit-status").textContent = `could not load: ${err.message}`));
  }

  // ---- one execution: stream, attempts, failovers, raw log ----

  function channelOf(id) {
    return `ai_response:${state.me.project_id}:ch_${id.replace(/^exec_/, "")}`;
  }

  async function select(id) {
    if (state.selected && state.selected.id === id) return;
    // An ended channel is already left on the server.
    if (state.selected && state.socket) state.socket.leave(state.selected.channel);
    for (const [rowId, row] of state.rows) row.tr.setAttribute("aria-selected", String(rowId === id));
    const sel = { id, channel: channelOf(id), lastSeq: 0, done: false };
    state.selected = sel;
    history.replaceState(null, "", `#${encodeURIComponent(id)}`);
    $("detail-empty").hidden = true;
    $("detail-body").hidden = false;
    $("detail-id").textContent = id;
    $("detail-status").dataset.status = "pending";
    $("detail-status").textContent = "loading";
    for (const fact of ["detail-model", "detail-duration", "detail-tokens", "detail-mode", "detail-design"]) $(fact).textContent = "–";
    $("detail-structured").hidden = true;
    $("detail-steps-panel").hidden = true;
    $("attempt-count").textContent = "0";
    $("attempts").tBodies[0].replaceChildren();
    $("stream").replaceChildren(h("span", { className: "cursor" }, " "));
    $("failovers").replaceChildren(h("li", { className: "muted" }, "none"));
    $("detail-error").textContent = "";
    $("provider-log").replaceChildren();
    state.socket.join(sel.channel, { after: 0, onFrame: (frame) => state.selected === sel && onExecutionEvent(sel, frame) });
    try {
      renderExecution(await api(`/v1/executions/${encodeURIComponent(id)}`));
      await loadLog(sel);
    } catch (err) {
      if (state.selected === sel) $("detail-error").textContent = err.message;
    }
  }

  function renderExecution(e) {
    const row = state.rows.get(e.id);
    if (row) fillRow(row, e);
    if (!state.selected || state.selected.id !== e.id) return;
    $("detail-cancel").hidden = TERMINAL.has(e.status);
    $("detail-status").replaceWith(h("span", { id: "detail-status", className: "status", dataset: { status: e.status } }, e.status));
    $("detail-model").textContent = e.model;
    $("detail-duration").textContent = ms(e.duration_ms);
    $("detail-tokens").textContent = e.usage ? `${e.usage.prompt_tokens} prompt · ${e.usage.completion_tokens} completion` : "–";
    $("detail-error").textContent = e.error ? `${e.error.code}: ${e.error.message}` : "";
    renderDesign(e);
    const attempts = e.attempts || [];
    $("attempt-count").textContent = String(attempts.length);
    $("attempts").tBodies[0].replaceChildren(
      ...attempts.map((a, i) =>
        h(
          "tr",
          {},
          h("td", {}, String(i + 1)),
          h("td", {}, a.provider),
          h("td", {}, a.model),
          h("td", {}, a.strategy),
          h("td", {}, h("span", { className: "status", dataset: { status: outcomeStatus(a.outcome) } }, a.outcome)),
          h("td", {}, String(a.chunks_delivered)),
          h("td", {}, ms(a.time_to_first_chunk_ms)),
          h("td", { className: "wrap" }, a.error_code ? `${a.error_code}: ${a.error_message || ""}` : "")
        )
      )
    );
  }

  /** Mode, structure and workflow; the parsed data and the validation outcome; each step. */
  function renderDesign(e) {
    $("detail-mode").textContent = e.mode || "live";
    const named = (r) => (r ? `${r.name} v${r.version}` : null);
    const design = [named(e.workflow) && `workflow ${named(e.workflow)}`, named(e.structure) && `structure ${named(e.structure)}`];
    $("detail-design").textContent = design.filter(Boolean).join(" · ") || "–";
    const v = e.validation;
    $("detail-structured").hidden = !v && !(e.output && "data" in e.output);
    const data = e.output && e.output.data;
    $("detail-data").textContent = data === undefined ? "(no valid answer)" : JSON.stringify(data, null, 2);
    const badge = $("detail-validation");
    if (v) {
      badge.dataset.status = v.valid ? "completed" : "failed";
      badge.textContent = (v.valid ? "valid" : "invalid") + (v.repairs ? ` after ${v.repairs} repair${v.repairs > 1 ? "s" : ""}` : "");
    } else {
      badge.textContent = "";
    }
    $("detail-validation-errors").replaceChildren(...((v && v.errors) || []).map((err) => h("li", {}, err)));
    const steps = e.steps || [];
    $("detail-steps-panel").hidden = steps.length === 0;
    $("detail-steps").replaceChildren(
      ...steps.map((s) =>
        h("li", {}, h("strong", {}, s.name), ` (${s.model}) `, h("span", { className: "json" }, s.data === undefined ? s.text : JSON.stringify(s.data)))
      )
    );
  }

  const outcomeStatus = (o) =>
    ({ succeeded: "completed", failed: "failed", cancelled: "cancelled", running: "processing" })[o] || "pending";

  function onExecutionEvent(sel, frame) {
    if (frame.event === "joined" || frame.event === "left" || frame.event === "lagged") return;
    if (typeof frame.seq === "number") {
      if (frame.seq <= sel.lastSeq) return; // already shown (a rejoin replays from lastSeq)
      sel.lastSeq = frame.seq;
    }
    const data = frame.data || {};
    switch (frame.event) {
      case "chunk": {
        const stream = $("stream");
        const cursor = stream.querySelector(".cursor");
        stream.insertBefore(document.createTextNode(data.delta), cursor);
        // An answer can end in tool calls (whole, one chunk): show each as a call line.
        for (const call of data.tool_calls || []) {
          const line = `\n→ ${call.function.name}(${call.function.arguments})`;
          stream.insertBefore(h("span", { className: "tool-call" }, line), cursor);
        }
        stream.scrollTop = stream.scrollHeight;
        break;
      }
      case "status":
        $("detail-status").dataset.status = data.status;
        $("detail-status").textContent = data.status;
        break;
      case "step": {
        // Each step's answer starts on its own line, under its name.
        if (data.state === "started") {
          const stream = $("stream");
          const line = `${stream.textContent.trim() ? "\n\n" : ""}[${data.step}]\n`;
          stream.insertBefore(h("span", { className: "marker" }, line), stream.querySelector(".cursor"));
        }
        break;
      }
      case "failover": {
        if (data.restart) {
          // The answer starts over: what was shown of it is void (struck through, kept visible).
          const stream = $("stream");
          const voided = h("span", { className: "void" });
          for (const node of [...stream.childNodes]) {
            if (node.nodeType === Node.TEXT_NODE) voided.append(node);
          }
          stream.insertBefore(voided, stream.querySelector(".cursor"));
          stream.insertBefore(h("span", { className: "marker" }, `\n↻ restarted (${data.reason})\n`), stream.querySelector(".cursor"));
        }
        const list = $("failovers");
        if (list.querySelector(".muted")) list.replaceChildren();
        list.append(h("li", {}, `seq ${data.seq}: ${data.from} → ${data.to} (${data.reason})`, data.message ? h("span", { className: "muted" }, ` ${data.message}`) : null));
        refreshSelected(sel);
        break;
      }
      case "error":
        $("detail-error").textContent = `${data.error.code}: ${data.error.message}`;
        break;
      case "done": {
        sel.done = true;
        const cursor = $("stream").querySelector(".cursor");
        if (cursor) cursor.remove();
        renderExecution(data);
        loadLog(sel);
        break;
      }
    }
  }

  async function refreshSelected(sel) {
    try {
      renderExecution(await api(`/v1/executions/${encodeURIComponent(sel.id)}`));
    } catch (_) {
      /* the done event brings the final record anyway */
    }
  }

  async function loadLog(sel) {
    const log = await api(`/v1/executions/${encodeURIComponent(sel.id)}/log`);
    if (state.selected !== sel) return;
    $("provider-log").replaceChildren(
      ...log.attempts.map((a) =>
        h(
          "div",
          { className: "log-attempt" },
          h("h4", {}, `Attempt ${a.attempt}: ${a.provider} / ${a.model} — ${a.outcome}`),
          a.entries.length === 0
            ? h("p", { className: "muted" }, "no entries")
            : h("table", { className: "log" }, h("tbody", {}, ...a.entries.map(logEntry)))
        )
      )
    );
    if (log.attempts.length === 0) $("provider-log").append(h("p", { className: "muted" }, "No provider was called."));
  }

  const headerLines = (headers) => (headers || []).map(([name, value]) => `${name}: ${value}`).join("\n");

  /** One debug entry: a raw chunk on one line; a request or response as HTTP-like text. */
  function logEntry(entry) {
    const { type, at_ms, elapsed_ms, ...rest } = entry;
    let data;
    switch (type) {
      case "chunk":
        data = rest.data;
        break;
      case "request":
        data = h("span", { className: "json" }, [`POST ${rest.url}`, headerLines(rest.headers)].filter(Boolean).join("\n") + `\n\n${JSON.stringify(rest.body, null, 2)}`);
        break;
      case "response":
        data = h("span", { className: "json" }, [`HTTP ${rest.status}`, headerLines(rest.headers)].filter(Boolean).join("\n"));
        break;
      case "error":
        data = `${rest.code}: ${rest.message}`;
        break;
      case "skipped":
        data = `${rest.reason}\n${rest.data}`;
        break;
      default:
        data = h("span", { className: "json" }, JSON.stringify(rest, null, 2));
    }
    return h(
      "tr",
      { className: "log-entry", dataset: { type } },
      h("td", { className: "at", title: new Date(at_ms).toISOString() }, `+${Number(elapsed_ms).toFixed(1)} ms`),
      h("td", { className: "kind" }, type),
      h("td", { className: "data" }, data)
    );
  }

  // ---- submit ----

  function randomKey() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return "dash-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    const button = $("submit-button");
    const prompt = $("prompt").value.trim();
    if (!prompt) return;
    button.disabled = true;
    $("submit-status").textContent = "sending…";
    try {
      const sub = await api("/v1/executions", {
        method: "POST",
        body: {
          model: $("model").value,
          idempotency_key: randomKey(),
          messages: [{ role: "user", content: prompt }],
        },
      });
      $("submit-status").textContent = `submitted ${sub.id}`;
      upsertRow({ execution_id: sub.id, model: sub.model, status: sub.status, at: sub.created_at }, true);
      select(sub.id);
    } catch (err) {
      $("submit-status").textContent = `${err.code}: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  }

  async function loadModels() {
    let slugs = [];
    try {
      const models = await api("/v1/models");
      slugs = (models.data || []).map((m) => m.id);
    } catch (_) {
      // No /v1/models on this server: the routing table names every configured model.
    }
    if (slugs.length === 0) {
      const routing = await api("/v1/routing/status");
      slugs = routing.models.map((m) => m.slug);
    }
    $("model").replaceChildren(...slugs.map((s) => h("option", { value: s }, s)));
  }

  // ---- provider health ----

  async function refreshHealth() {
    let routing;
    try {
      routing = await api("/v1/routing/status");
    } catch (err) {
      if (err.status === 401) signOut("The key is no longer valid.");
      return;
    }
    $("providers").tBodies[0].replaceChildren(
      ...routing.providers.map((p) => {
        const breaker = p.state || "unknown";
        const cooldown = p.cooldown_remaining_ms > 0 ? ` (${Math.ceil(p.cooldown_remaining_ms / 1000)} s)` : "";
        const rate = typeof p.error_rate === "number" ? `${(p.error_rate * 100).toFixed(1)}%` : "–";
        return h(
          "tr",
          {},
          h("td", {}, p.name, p.usable ? null : h("span", { className: "muted" }, " (not usable)")),
          h("td", {}, p.kind),
          h("td", {}, h("span", { className: "breaker", dataset: { state: breaker } }, breaker.replace("_", "-") + cooldown)),
          h("td", {}, ms(p.latency_ms_ewma)),
          h("td", {}, ms(p.first_chunk_ms_ewma)),
          h("td", {}, `${rate} (${p.failures ?? 0}/${p.attempts ?? 0})`),
          h("td", {}, String(p.in_flight ?? 0))
        );
      })
    );
    renderRoutes(routing);
    refreshBalance();
  }

  const usd = (micros) => (micros == null ? "–" : `$${(micros / 1e6).toFixed(micros % 10_000 === 0 ? 2 : 6)}`);
  const left = (w) => {
    if (!w) return "–";
    const r = w.requests_remaining;
    return r == null ? "no cap" : String(r);
  };
  const leftTokens = (w) => (!w || w.tokens_remaining == null ? "no cap" : compact(w.tokens_remaining));

  function renderRoutes(routing) {
    const rows = [];
    for (const m of routing.models) {
      for (const r of m.routes) {
        const q = r.quota || {};
        const reason = r.admitted ? "in rotation" : (r.not_admitted_reason || "out").replaceAll("_", " ");
        const price = r.price ? `${r.price.input_per_mtok} · ${r.price.output_per_mtok}` : "–";
        rows.push(
          h(
            "tr",
            { dataset: { admitted: String(r.admitted) } },
            h("td", {}, m.slug),
            h("td", { className: "mono small" }, `${r.provider}/${r.model}`),
            h("td", {}, h("span", { className: "breaker", dataset: { state: r.admitted ? "closed" : "open" } }, reason)),
            h("td", {}, `${left(q.minute)} · ${left(q.day)}`),
            h("td", {}, `${leftTokens(q.minute)} · ${leftTokens(q.day)}`),
            h("td", {}, price)
          )
        );
      }
    }
    $("routes").tBodies[0].replaceChildren(...rows);
  }

  async function refreshBalance() {
    let b;
    try {
      b = await api("/v1/balance");
    } catch (_) {
      return;
    }
    if (b.unlimited) {
      $("balance-available").textContent = "unlimited (no balance set)";
      $("balance-held").textContent = "–";
      $("balance-total").textContent = "–";
    } else {
      $("balance-available").textContent = usd(b.available_micros);
      $("balance-held").textContent = usd(b.held_micros);
      $("balance-total").textContent = usd(b.balance_micros);
    }
  }

  // ---- API keys (admins) ----

  async function loadKeys() {
    if (!state.me || state.me.role !== "admin") return;
    let list;
    try {
      list = await api("/v1/keys");
    } catch (err) {
      $("key-error").textContent = err.message;
      return;
    }
    $("keys").hidden = false;
    $("key-table").tBodies[0].replaceChildren(
      ...list.data.map((k) => {
        const revoked = Boolean(k.revoked_at);
        const own = k.id === state.me.key_id;
        const act = (label) =>
          h("button", { type: "button", dataset: { action: label.toLowerCase(), id: k.id }, disabled: own }, label);
        const actions = h("td", {});
        if (!revoked) actions.append(act("Rotate"), " ", act("Revoke"));
        return h(
          "tr",
          { dataset: { id: k.id } },
          h("td", {}, k.name || "–"),
          h("td", { className: "mono", title: k.id }, `${k.prefix}…`),
          h("td", {}, k.role),
          h("td", {}, k.mode || "live"),
          h("td", {}, clock(k.created_at)),
          h("td", {}, revoked ? "revoked" : own ? "this session" : k.rotated_at ? "rotated" : "active"),
          actions
        );
      })
    );
  }

  function showSecret(secret) {
    $("key-secret-value").textContent = secret;
    $("key-secret").hidden = false;
  }

  async function onKeyAction(ev) {
    const button = ev.target.closest("button[data-action]");
    if (!button) return;
    const { action, id } = button.dataset;
    if (action === "revoke" && !confirm(`Revoke ${id}? Its open streams end at once.`)) return;
    $("key-error").textContent = "";
    try {
      const key = await api(`/v1/keys/${encodeURIComponent(id)}${action === "rotate" ? "/rotate" : ""}`, {
        method: action === "rotate" ? "POST" : "DELETE",
      });
      if (action === "rotate") showSecret(key.key);
      else $("key-secret").hidden = true;
    } catch (err) {
      $("key-error").textContent = `${action}: ${err.message}`;
    }
    loadKeys();
  }

  async function onCreateKey(ev) {
    ev.preventDefault();
    $("key-error").textContent = "";
    const name = $("key-name").value.trim();
    try {
      const body = { name: name || null, role: $("key-role").value, mode: $("key-mode").value };
      const key = await api("/v1/keys", { method: "POST", body });
      showSecret(key.key);
      $("key-name").value = "";
    } catch (err) {
      $("key-error").textContent = `create: ${err.message}`;
    }
    loadKeys();
  }

  // ---- analytics charts (SVG) ----

  function scheduleHealth(delay) {
    if (state.healthPending) return;
    state.healthPending = setTimeout(() => {
      state.healthPending = null;
      refreshHealth();
    }, delay);
  }

  function scheduleAnalytics(delay) {
    clearTimeout(state.analyticsPending);
    state.analyticsPending = setTimeout(refreshAnalytics, delay);
  }

  async function refreshAnalytics() {
    refreshBalance();
    let body;
    try {
      body = await api("/v1/analytics?group_by=none&bucket=minute");
    } catch (_) {
      return;
    }
    const step = body.bucket_seconds * 1000;
    const end = Math.floor(Date.parse(body.to) / step) * step;
    const byStart = new Map();
    for (const s of body.series) for (const b of s.buckets) byStart.set(Date.parse(b.start), b);
    const points = [];
    for (let t = end - 59 * step; t <= end; t += step) points.push({ t, b: byStart.get(t) });
    const n = (v) => v || 0;
    const errorsOf = (b) => (b ? Object.values(b.errors).reduce((a, c) => a + c, 0) : 0);
    drawBars($("chart-requests"), points, [
      { cls: "b1", label: "ok", value: (b) => (b ? b.requests - errorsOf(b) : 0) },
      { cls: "b3", label: "errors", value: errorsOf },
    ]);
    drawLines($("chart-latency"), points, [
      { cls: "s1", label: "p50", value: (b) => (b ? b.latency_ms.p50 : null) },
      { cls: "s2", label: "p95", value: (b) => (b ? b.latency_ms.p95 : null) },
    ]);
    const spent = body.series.flatMap((s) => s.buckets).reduce((a, b) => a + (b.spend_micros || 0), 0);
    $("spend-hour").textContent = usd(spent);
    drawBars($("chart-tokens"), points, [
      { cls: "b1", label: "prompt", value: (b) => (b ? n(b.tokens.prompt) : 0) },
      { cls: "b2", label: "completion", value: (b) => (b ? n(b.tokens.completion) : 0) },
    ]);
  }

  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  /** A round top for the y axis at or above `v`, whose half is a whole number. */
  function niceMax(v) {
    if (v <= 2) return 2;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    return (p === 1 ? [2, 4, 6, 8, 10] : [1, 2, 5, 10].map((m) => m * p)).find((m) => m >= v);
  }

  /** The frame shared by every chart; returns the scales. */
  function frame(svg, points, max) {
    const width = Math.max(svg.getBoundingClientRect().width, 200);
    const height = 160;
    const m = { l: 40, r: 8, t: 8, b: 20 };
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren();
    const top = niceMax(max);
    const x = (i) => m.l + ((width - m.l - m.r) * (i + 0.5)) / points.length;
    const y = (v) => height - m.b - ((height - m.t - m.b) * v) / top;
    for (const frac of [0, 0.5, 1]) {
      const v = top * frac;
      svg.append(s("line", { class: frac === 0 ? "axis" : "gridline", x1: m.l, x2: width - m.r, y1: y(v), y2: y(v) }));
      svg.append(s("text", { x: m.l - 4, y: y(v) + 3, "text-anchor": "end" }, compact(v)));
    }
    points.forEach((p, i) => {
      const last = i === points.length - 1;
      if (i % 15 === 0 || last) {
        const d = new Date(p.t);
        const anchor = i === 0 ? "start" : last ? "end" : "middle";
        const at = i === 0 ? m.l : last ? width - m.r : x(i);
        svg.append(s("text", { x: at, y: height - 5, "text-anchor": anchor }, `${pad(d.getHours())}:${pad(d.getMinutes())}`));
      }
    });
    return { x, y, barWidth: Math.max(((width - m.l - m.r) / points.length) * 0.7, 1) };
  }

  function compact(v) {
    if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
    return String(+v.toFixed(1));
  }

  function drawBars(svg, points, layers) {
    const totals = points.map((p) => layers.reduce((a, l) => a + l.value(p.b), 0));
    const { x, y, barWidth } = frame(svg, points, Math.max(...totals));
    points.forEach((p, i) => {
      if (totals[i] === 0) return;
      const d = new Date(p.t);
      const g = s("g", {}, s("title", {}, `${pad(d.getHours())}:${pad(d.getMinutes())} — ${layers.map((l) => `${l.label} ${l.value(p.b)}`).join(", ")}`));
      let base = 0;
      for (const l of layers) {
        const v = l.value(p.b);
        if (v > 0) g.append(s("rect", { class: l.cls, x: x(i) - barWidth / 2, width: barWidth, y: y(base + v), height: y(base) - y(base + v) }));
        base += v;
      }
      svg.append(g);
    });
  }

  function drawLines(svg, points, lines) {
    const values = lines.flatMap((l) => points.map((p) => l.value(p.b))).filter((v) => v !== null && v !== undefined);
    const { x, y } = frame(svg, points, Math.max(0, ...values));
    for (const l of lines) {
      let d = "";
      let pen = false;
      points.forEach((p, i) => {
        const v = l.value(p.b);
        if (v === null || v === undefined) {
          pen = false;
          return;
        }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
        const dt = new Date(p.t);
        svg.append(s("circle", { class: l.cls, cx: x(i), cy: y(v), r: 2.2 }, s("title", {}, `${pad(dt.getHours())}:${pad(dt.getMinutes())} — ${l.label} ${v} ms`)));
      });
      if (d) svg.prepend(s("path", { class: l.cls, d }));
    }
  }

  // ---- theme ----

  function applyTheme(dark) {
    document.documentElement.dataset.theme = dark ? "dark" : "light";
    const button = $("theme-toggle");
    button.setAttribute("aria-pressed", String(dark));
    button.textContent = dark ? "Light mode" : "Dark mode";
  }

  // ---- start ----

  document.addEventListener("DOMContentLoaded", () => {
    applyTheme(document.documentElement.dataset.theme === "dark");
    $("theme-toggle").addEventListener("click", () => {
      const dark = document.documentElement.dataset.theme !== "dark";
      applyTheme(dark);
      try {
        localStorage.setItem(THEME_STORAGE, dark ? "dark" : "light");
      } catch (_) {}
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    window.addEventListener("resize", () => state.key && scheduleAnalytics(200));
    $("submit-form").addEventListener("submit", onSubmit);
    $("filter-status").addEventListener("change", reloadExecutions);
    $("filter-text").addEventListener("input", () => {
      for (const row of state.rows.values()) applyFilter(row.tr);
    });
    $("load-more").addEventListener("click", () => loadExecutions(true).catch(() => {}));
    $("key-form").addEventListener("submit", onCreateKey);
    $("key-table").addEventListener("click", onKeyAction);
    $("detail-cancel").addEventListener("click", async () => {
      const sel = state.selected;
      if (!sel) return;
      $("detail-cancel").disabled = true;
      try {
        renderExecution(await api(`/v1/executions/${encodeURIComponent(sel.id)}/cancel`, { method: "POST", body: {} }));
      } catch (err) {
        $("detail-error").textContent = `cancel: ${err.message}`;
      } finally {
        $("detail-cancel").disabled = false;
      }
    });
    $("signin-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      $("signin-error").textContent = "";
      const key = $("api-key").value.trim();
      try {
        await signIn(key);
        $("api-key").value = "";
      } catch (err) {
        state.key = null;
        $("signin-error").textContent = err.status === 401 ? "That key was not accepted." : `Cannot sign in: ${err.message}`;
      }
    });
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) {
      signIn(saved).catch(() => signOut("Your session expired: sign in again."));
    }
  });
})();
