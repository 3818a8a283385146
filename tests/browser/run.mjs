// Browser suite: the real switchyard binary on 127.0.0.1:0 with a temp data dir, driven in
// Debian's headless Chromium through playwright-core (no browser download).
//
//   node tests/browser/run.mjs            (builds target/debug/switchyard first)
//
// Screenshots go to target/browser-artifacts/. The last line is `N passed, M failed`; the exit
// code is non-zero on any failure.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

import { FULL_TEXT, startFakeUpstream } from "./fake-upstream.mjs";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(ROOT, "target");
const BINARY = join(TARGET, "debug", "switchyard");
const ARTIFACTS = join(TARGET, "browser-artifacts");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const ADMIN_KEY = "browser-suite-admin-key";
const TEST_TIMEOUT_MS = 60_000;

// The mock streams 40 chunks 50 ms apart (2 s): long enough to watch an execution live.
// `chat-failover` starts on an upstream that cuts its stream after three chunks and continues
// on a steady one (both served by fake-upstream.mjs).
const config = (upstream, foreignOrigin) => `
listen = "127.0.0.1:0"
data_dir = "unused"

[cors]
allowed_origins = ["${foreignOrigin}"]

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = 40
mock_chunk_interval_ms = 50

[[providers]]
name = "flaky"
kind = "openai"
base_url = "${upstream}"
max_attempts = 1

[[providers]]
name = "steady"
kind = "openai"
base_url = "${upstream}"

[[models]]
slug = "chat-default"
routes = [{ provider = "mock", model = "mock-1", input_per_mtok = 1.0, output_per_mtok = 2.0, requests_per_day = 1000 }]

[[models]]
slug = "chat-failover"
routes = [{ provider = "flaky", model = "flaky-1" }, { provider = "steady", model = "steady-1" }]
`;

// ---- a tiny runner ----

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function assertEqual(actual, expected, what) {
  if (actual !== expected) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

function withTimeout(promise, ms, name) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${name}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---- the server ----

function build() {
  if (process.env.SWITCHYARD_SKIP_BUILD) return;
  const r = spawnSync("cargo", ["build", "--quiet", "--bin", "switchyard"], { cwd: ROOT, stdio: "inherit" });
  if (r.status !== 0) throw new Error("cargo build failed");
}

async function startServer(work, upstream, foreignOrigin) {
  const configPath = join(work, "switchyard.toml");
  writeFileSync(configPath, config(upstream, foreignOrigin));
  const child = spawn(
    BINARY,
    ["--config", configPath, "--data-dir", join(work, "data"), "--listen", "127.0.0.1:0"],
    {
      env: { ...process.env, SWITCHYARD_ADMIN_KEY: ADMIN_KEY, RUST_LOG: process.env.RUST_LOG || "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    }
  );
  child.stderr.pipe(createWriteStream(join(ARTIFACTS, "server.log")));
  const address = await new Promise((resolveAddr, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const m = line.match(/^switchyard listening on (http:\/\/\S+)$/);
      if (m) resolveAddr(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`server exited early with ${code} (see ${ARTIFACTS}/server.log)`)));
    setTimeout(() => reject(new Error("server did not print its address within 30 s")), 30_000);
  });
  return { child, address };
}

async function stopServer(child) {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 8000);
  await exited;
  clearTimeout(timer);
}

// ---- REST helpers ----

let BASE;

async function rest(path, { method = "GET", body, key = ADMIN_KEY } = {}) {
  const res = await fetch(BASE + path, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

let submitted = 0;
function submit(prompt, model = "chat-default") {
  submitted += 1;
  return rest("/v1/executions", {
    method: "POST",
    body: {
      model,
      idempotency_key: `browser-${Date.now()}-${submitted}`,
      messages: [{ role: "user", content: prompt }],
    },
  });
}

async function waitTerminal(id) {
  for (let i = 0; i < 400; i++) {
    const e = await rest(`/v1/executions/${id}`);
    if (!["pending", "processing"].includes(e.status)) return e;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${id} did not finish`);
}

// ---- the tests ----

let context;
let page; // the dashboard page, shared by the dashboard tests in order
const pageErrors = [];

const shot = (p, name) => p.screenshot({ path: join(ARTIFACTS, name), fullPage: true });
const text = (p, selector) => p.locator(selector).evaluate((el) => el.textContent);

test("watch.html follows a live execution to done with the exact text", async () => {
  const sub = await submit("watch this stream");
  const watch = await context.newPage();
  const url = `${BASE}/static/watch.html?token=${encodeURIComponent(sub.ws_token)}&channel=${encodeURIComponent(sub.websocket_channel)}`;
  await watch.goto(url);
  // Live: text arrives while the execution is still running.
  await watch.waitForFunction(
    () => document.getElementById("text").textContent.length > 0 && document.getElementById("status").dataset.state !== "done",
    null,
    { timeout: 10_000 }
  );
  await watch.locator("#status[data-state='done']").waitFor({ timeout: 20_000 });
  assertEqual(await text(watch, "#status"), "done", "status");
  assertEqual(await text(watch, "#result"), "completed", "final status");
  const exec = await rest(`/v1/executions/${sub.id}`);
  assertEqual(exec.status, "completed", "execution status");
  assert(exec.output.text.split(" ").length > 30, "a long answer");
  assertEqual(await text(watch, "#text"), exec.output.text, "streamed text");
  await shot(watch, "watch-done.png");

  // The token is single-use: the same address again is refused with a clear close code.
  const again = await context.newPage();
  await again.goto(url);
  await again.locator("#status[data-state='error']").waitFor({ timeout: 10_000 });
  assert((await text(again, "#status")).includes("4401"), "a reused token is refused with 4401");
  await again.close();
  await watch.close();
});

// switchyard.js in a page: follow an execution, drop the connection twice mid-stream, and check
// the follower resumed after the last seq it delivered — every seq once, in order, the exact
// text — over the WebSocket channel (fresh one-time tokens from an idempotent re-submit) and SSE.
test("switchyard.js: follow resumes after dropped connections without a gap or a repeat", async () => {
  const p = await context.newPage();
  await p.goto(`${BASE}/static/watch.html`);
  for (const transport of ["websocket", "sse"]) {
    const got = await p.evaluate(
      async ({ key, transport }) => {
        const { Switchyard, follow } = await import("/static/switchyard.js");
        const sy = new Switchyard({ apiKey: key });
        const body = {
          model: "chat-default",
          idempotency_key: `sdk-js-${transport}-${Date.now()}`,
          messages: [{ role: "user", content: `follow me over ${transport}` }],
        };
        const sub = await sy.submit(body);
        const seqs = [];
        const states = [];
        let text = "";
        let refreshed = 0;
        const target = sy.target(sub);
        const f = follow({
          ...target,
          // Over the channel: the submit's token, then fresh ones; SSE uses the key.
          apiKey: transport === "sse" ? key : undefined,
          refreshToken: async () => {
            refreshed += 1;
            return sy.freshToken(body);
          },
          transport,
          onEvent: (e) => seqs.push(e.seq),
          onText: (t) => (text += t),
          onState: (s) => states.push(s),
        });
        setTimeout(() => f.drop(), 400);
        setTimeout(() => f.drop(), 1100);
        const record = await f.done;
        return { seqs, text, record, states, refreshed };
      },
      { key: ADMIN_KEY, transport }
    );
    assertEqual(got.record.status, "completed", `${transport}: final status`);
    assertEqual(got.text, got.record.output.text, `${transport}: the exact text`);
    got.seqs.forEach((seq, i) => assertEqual(seq, i + 1, `${transport}: seq ${i + 1}`));
    const reconnects = got.states.filter((s) => s === "connecting").length;
    assert(reconnects >= 2, `${transport}: reconnected after the drops (${got.states.join(",")})`);
    if (transport === "websocket") assert(got.refreshed >= 1, "fresh tokens were fetched");
  }
  await p.close();
});

test("dashboard: a bad key is refused at sign-in", async () => {
  page = await context.newPage();
  page.on("pageerror", (err) => pageErrors.push(err.message));
  await page.goto(BASE + "/");
  await page.locator("#signin").waitFor();
  assert(await page.locator("#dashboard").isHidden(), "dashboard hidden before sign-in");
  await page.fill("#api-key", "not-a-key");
  await page.click("#signin-form button[type=submit]");
  await page.locator("#signin-error", { hasText: "not accepted" }).waitFor({ timeout: 5000 });
  await shot(page, "dashboard-signin.png");
});

test("dashboard: sign in with an API key", async () => {
  await page.fill("#api-key", ADMIN_KEY);
  await page.click("#signin-form button[type=submit]");
  await page.locator("#dashboard").waitFor({ timeout: 10_000 });
  assert((await text(page, "#whoami")).includes("project default"), "the project is named");
  await page.locator("#socket-state[data-state='live']").waitFor({ timeout: 10_000 });
  const models = await page.locator("#model option").allTextContents();
  assertEqual(models.join(","), "chat-default,chat-failover,auto", "models");
  assertEqual(await page.evaluate(() => sessionStorage.getItem("switchyard.api_key")), ADMIN_KEY, "key in session storage");
  assertEqual(await page.evaluate(() => localStorage.getItem("switchyard.api_key")), null, "key not in local storage");
  // The execution of the watch test is listed.
  assert((await page.locator("#executions tbody tr").count()) >= 1, "the initial list is loaded");
});

let dashboardExec;
// Markup in the prompt: it reaches the raw provider log and must render as text.
const PROMPT = `<img src=x onerror="window.__xss = 1">Tell me about switchyard`;

test("dashboard: submit a prompt, see the live row and the stream render", async () => {
  await page.selectOption("#model", "chat-default");
  await page.fill("#prompt", PROMPT);
  await page.click("#submit-button");
  await page.locator("#submit-status", { hasText: "submitted exec_" }).waitFor({ timeout: 10_000 });
  const id = (await text(page, "#submit-status")).replace("submitted ", "");
  dashboardExec = id;
  await page.locator(`#executions tr[data-id='${id}']`).waitFor({ timeout: 5000 });
  // Live: text in the stream pane while the execution is processing.
  await page.waitForFunction(
    () => document.getElementById("stream").textContent.trim().length > 0 && document.getElementById("detail-status").dataset.status === "processing",
    null,
    { timeout: 10_000 }
  );
  await shot(page, "dashboard-streaming.png");
  await page.locator("#detail-status[data-status='completed']").waitFor({ timeout: 20_000 });
  await page.locator(`#executions tr[data-id='${id}'] .status[data-status='completed']`).waitFor({ timeout: 5000 });
  const exec = await rest(`/v1/executions/${id}`);
  assertEqual(exec.status, "completed", "execution status");
  assertEqual(await text(page, "#stream"), exec.output.text, "rendered stream");
  assert((await text(page, "#detail-tokens")).includes("completion"), "usage shown");
});

test("dashboard: an execution submitted elsewhere appears live", async () => {
  const sub = await submit("from another client");
  const row = page.locator(`#executions tbody tr[data-id='${sub.id}']`);
  await row.waitFor({ timeout: 10_000 });
  assertEqual(await page.locator("#executions tbody tr").first().getAttribute("data-id"), sub.id, "newest on top");
  assert((await row.textContent()).includes("chat-default"), "the row names the model");
  await row.locator(".status[data-status='completed']").waitFor({ timeout: 20_000 });
  await waitTerminal(sub.id);
});

test("dashboard: open the attempts and the raw provider log", async () => {
  // Back to the dashboard's own execution via its row.
  await page.click(`#executions tr[data-id='${dashboardExec}']`);
  await page.locator("#detail-status[data-status='completed']").waitFor({ timeout: 10_000 });
  await page.click("#attempts-panel summary");
  const rows = page.locator("#attempts tbody tr");
  await rows.first().waitFor();
  assertEqual(await rows.count(), 1, "attempts");
  const cells = await rows.first().locator("td").allTextContents();
  assertEqual(cells[1], "mock", "attempt provider");
  assertEqual(cells[4], "succeeded", "attempt outcome");
  await page.click("#log-panel summary");
  await page.locator("#provider-log .log-entry").first().waitFor({ timeout: 5000 });
  const kinds = await page.locator("#provider-log .log-entry .kind").allTextContents();
  assertEqual(kinds[0], "request", "first log entry");
  assertEqual(kinds.filter((k) => k === "chunk").length, 40, "one log entry per raw chunk");
  const log = await text(page, "#provider-log");
  assert(log.includes('<img src=x onerror=\\"window.__xss = 1\\">'), "the prompt is shown as text");
  assertEqual(await page.locator("#provider-log img").count(), 0, "no markup from the log");
  assertEqual(await page.evaluate(() => window.__xss), undefined, "no script ran");
  assertEqual(await page.locator("#stream .cursor").count(), 0, "the cursor is gone after done");
  // The failover list says there was none.
  assertEqual(await text(page, "#failovers"), "none", "failovers");
  await page.locator("#attempts-panel").scrollIntoViewIfNeeded();
  await shot(page, "dashboard-attempts-log.png");
});

test("dashboard: a failover shows in the stream, the failover list, the attempts and the log", async () => {
  await page.selectOption("#model", "chat-failover");
  await page.fill("#prompt", "spell the alphabet");
  await page.click("#submit-button");
  await page.waitForFunction((previous) => {
    const status = document.getElementById("submit-status").textContent;
    return status.startsWith("submitted exec_") && !status.endsWith(previous);
  }, dashboardExec, { timeout: 10_000 });
  const id = (await text(page, "#submit-status")).replace("submitted ", "");
  await page.waitForFunction((id) => document.getElementById("detail-id").textContent === id, id);
  await page.locator("#detail-status[data-status='completed']").waitFor({ timeout: 20_000 });
  assertEqual(await text(page, "#stream"), FULL_TEXT, "the answer continues where the cut left it");
  const failovers = await page.locator("#failovers li").allTextContents();
  assertEqual(failovers.length, 1, "one failover");
  assert(failovers[0].includes("flaky → steady (stream_interrupted)"), failovers[0]);
  const rows = page.locator("#attempts tbody tr");
  await page.waitForFunction(() => document.querySelectorAll("#attempts tbody tr").length === 2);
  const first = await rows.nth(0).locator("td").allTextContents();
  const second = await rows.nth(1).locator("td").allTextContents();
  assertEqual(`${first[1]} ${first[4]} ${first[5]}`, "flaky failed 3", "first attempt");
  assert(first[7].startsWith("stream_interrupted"), first[7]);
  assertEqual(`${second[1]} ${second[4]} ${second[5]}`, "steady succeeded 7", "second attempt");
  await page.waitForFunction(() => document.querySelectorAll("#provider-log .log-attempt").length === 2);
  const health = page.locator("#providers tbody tr", { hasText: "flaky" });
  await health.waitFor({ timeout: 10_000 });
  await page.waitForFunction(() => /\(1\/1\)/.test(document.querySelector("#providers").textContent), null, { timeout: 10_000 });
  await shot(page, "dashboard-failover.png");
});

test("dashboard: provider health and analytics charts", async () => {
  const provider = page.locator("#providers tbody tr", { hasText: "mock" });
  await provider.waitFor({ timeout: 10_000 });
  assert((await provider.textContent()).includes("closed"), "breaker closed");
  // Charts refresh shortly after an execution ends.
  await page.locator("#chart-requests rect").first().waitFor({ timeout: 20_000 });
  await page.locator("#chart-latency circle").first().waitFor({ timeout: 5000 });
  await page.locator("#chart-tokens rect").first().waitFor({ timeout: 5000 });
  const analytics = await rest("/v1/analytics?group_by=none");
  const total = analytics.series[0].buckets.reduce((a, b) => a + b.requests, 0);
  assert(total >= 3, `analytics count the executions (${total})`);
});

test("dashboard: structured data, its validation and a workflow's steps", async () => {
  await rest("/v1/structures", {
    method: "POST",
    body: { name: "browser-ticket", schema: { type: "object", required: ["intent"], properties: { intent: { enum: ["refund", "other"] } } } },
  });
  await rest("/v1/workflows", {
    method: "POST",
    body: { name: "browser-flow", model: "chat-default", steps: [{ name: "classify", structure: "browser-ticket" }, { name: "reply", prompt: "Answer the {{steps.classify.data.intent}}." }] },
  });
  const structured = await rest("/v1/executions", {
    method: "POST",
    body: { model: "chat-default", structure: "browser-ticket", idempotency_key: `browser-structured-${Date.now()}`, messages: [{ role: "user", content: "refund please" }] },
  });
  const exec = await waitTerminal(structured.id);
  await page.click(`#executions tr[data-id='${structured.id}']`);
  await page.locator("#detail-validation[data-status='completed']").waitFor({ timeout: 10_000 });
  assertEqual(JSON.parse(await text(page, "#detail-data")).intent, exec.output.data.intent, "the parsed data");
  assertEqual(await text(page, "#detail-validation"), "valid", "the validation outcome");
  assert((await text(page, "#detail-design")).includes("structure browser-ticket v1"), "the structure and its version");

  const flow = await rest("/v1/executions", {
    method: "POST",
    body: { workflow: "browser-flow", idempotency_key: `browser-flow-${Date.now()}`, messages: [{ role: "user", content: "where is it" }] },
  });
  await page.locator(`#executions tr[data-id='${flow.id}']`).click({ timeout: 10_000 });
  await page.locator("#detail-status[data-status='completed']").waitFor({ timeout: 20_000 });
  const stream = await text(page, "#stream");
  assert(stream.startsWith("[classify]") && stream.includes("[reply]"), `each step's answer under its name: ${stream}`);
  await page.locator("#detail-steps li").nth(1).waitFor({ timeout: 5000 });
  const steps = await page.locator("#detail-steps li").allTextContents();
  assert(steps[0].startsWith("classify") && steps[0].includes('"intent"'), `the first step's data: ${steps[0]}`);
  assert(steps[1].startsWith("reply"), `the second step: ${steps[1]}`);
  await page.locator("#detail").screenshot({ path: join(ARTIFACTS, "workflow.png") });
});

test("dashboard: the routes' headroom and the project's balance", async () => {
  const route = page.locator("#routes tbody tr", { hasText: "mock/mock-1" });
  await route.waitFor({ timeout: 10_000 });
  const text = await route.textContent();
  assert(text.includes("in rotation"), `route admitted: ${text}`);
  // Requests left today: 1000 minus what the earlier tests ran.
  assert(/· 9\d\d/.test(text), `daily headroom shown: ${text}`);
  assert(text.includes("1 · 2"), `prices shown: ${text}`);
  await page.waitForFunction(() => /unlimited/.test(document.querySelector("#balance-available").textContent), null, { timeout: 10_000 });
  await rest("/v1/projects/default/balance", { method: "POST", body: { amount_micros: 2_500_000 } });
  await page.waitForFunction(() => /^\$2\.\d+/.test(document.querySelector("#balance-available").textContent), null, { timeout: 15_000 });
  await page.waitForFunction(() => /^\$0\.0\d*[1-9]/.test(document.querySelector("#spend-hour").textContent), null, { timeout: 15_000 });
  await page.locator("#balance").screenshot({ path: join(ARTIFACTS, "balance.png") });
});

test("dashboard: the list shows durations, tokens, errors; filters; loads more; cancels", async () => {
  // A running execution, cancelled from its detail panel.
  const long = await submit("a long story to cancel");
  const row = page.locator(`#executions tbody tr[data-id="${long.id}"]`);
  await row.waitFor({ timeout: 10_000 });
  await row.click();
  await page.locator("#detail-cancel:not([hidden])").waitFor({ timeout: 10_000 });
  await page.locator("#detail-cancel").click();
  await page.waitForFunction(() => document.getElementById("detail-status").textContent === "cancelled", null, { timeout: 10_000 });
  await page.locator("#detail-cancel[hidden]").waitFor({ state: "attached", timeout: 5000 });
  await page.waitForFunction((id) => {
    const tr = document.querySelector(`#executions tbody tr[data-id="${id}"]`);
    return tr && /cancelled/.test(tr.textContent);
  }, long.id, { timeout: 10_000 });
  // The first page of the list shows each prompt's start; the text filter searches it too.
  await page.selectOption("#filter-status", "cancelled");
  await page.waitForFunction((id) => {
    const tr = document.querySelector(`#executions tbody tr[data-id="${id}"]`);
    return tr && tr.querySelector(".col-prompt").textContent === "a long story to cancel";
  }, long.id, { timeout: 10_000 });
  await page.selectOption("#filter-status", "");
  // A completed row carries its duration and tokens.
  const done = await submit("a short one");
  await waitTerminal(done.id);
  await page.waitForFunction((id) => {
    const tr = document.querySelector(`#executions tbody tr[data-id="${id}"]`);
    return tr && / ms$/.test(tr.querySelector(".col-duration").textContent) && /\d+ \+ \d+/.test(tr.querySelector(".col-tokens").textContent);
  }, done.id, { timeout: 10_000 });
  // The text filter keeps only what matches; the status filter asks the server.
  await page.fill("#filter-text", "long story to cancel");
  await page.waitForFunction(() => Array.from(document.querySelectorAll("#executions tbody tr")).filter((tr) => !tr.hidden).length === 1, null, { timeout: 5000 });
  await page.fill("#filter-text", "");
  await page.selectOption("#filter-status", "cancelled");
  await page.waitForFunction(() => {
    const rows = Array.from(document.querySelectorAll("#executions tbody tr"));
    return rows.length > 0 && rows.every((tr) => /cancelled/.test(tr.textContent));
  }, null, { timeout: 10_000 });
  await page.selectOption("#filter-status", "");
  // More than a page: "Load more" follows the cursor.
  await Promise.all(Array.from({ length: 55 }, (_, i) => submit(`filler ${i}`, "chat-failover")));
  await page.selectOption("#filter-status", "completed");
  await page.selectOption("#filter-status", "");
  await page.locator("#load-more:not([hidden])").waitFor({ timeout: 10_000 });
  const before = await page.locator("#executions tbody tr").count();
  await page.locator("#load-more").click();
  await page.waitForFunction((n) => document.querySelectorAll("#executions tbody tr").length > n, before, { timeout: 10_000 });
  // Readable on a phone: nothing wider than the screen.
  await page.setViewportSize({ width: 420, height: 900 });
  await shot(page, "dashboard-420.png");
  const overflow = await page.evaluate(() => {
    const wide = Array.from(document.querySelectorAll("body *"))
      .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
      .map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.className}`)
      .slice(0, 5);
    return { over: document.documentElement.scrollWidth - window.innerWidth, wide };
  });
  assert(overflow.over <= 1, `no horizontal scroll at 420 px (${overflow.over} px over: ${overflow.wide.join(", ")})`);
  await page.setViewportSize({ width: 1280, height: 900 });
  // Leave a completed execution selected, as the next test expects.
  await page.locator(`#executions tbody tr[data-id="${done.id}"]`).click();
  await page.locator("#detail-status[data-status='completed']").waitFor({ timeout: 10_000 });
});

test("dashboard: an admin creates, rotates and revokes keys", async () => {
  await page.locator("#keys:not([hidden])").waitFor({ timeout: 10_000 });
  await page.fill("#key-name", "browser-made");
  await page.click("#key-form button[type=submit]");
  await page.locator("#key-secret:not([hidden])").waitFor({ timeout: 10_000 });
  const first = await text(page, "#key-secret-value");
  assert(/^sy_/.test(first), `the new secret is shown once: ${first}`);
  const row = page.locator("#key-table tbody tr", { hasText: "browser-made" });
  await row.waitFor({ timeout: 10_000 });
  const me = await (await fetch(`${BASE}/v1/me`, { headers: { authorization: `Bearer ${first}` } })).json();
  assertEqual(me.project_id, "default", "the created key works");
  await row.locator("button[data-action=rotate]").click();
  await page.waitForFunction((old) => document.getElementById("key-secret-value").textContent !== old, first, { timeout: 10_000 });
  const second = await text(page, "#key-secret-value");
  assertEqual((await fetch(`${BASE}/v1/me`, { headers: { authorization: `Bearer ${first}` } })).status, 401, "the old secret after rotation");
  assertEqual((await fetch(`${BASE}/v1/me`, { headers: { authorization: `Bearer ${second}` } })).status, 200, "the new secret");
  page.once("dialog", (d) => d.accept());
  await row.locator("button[data-action=revoke]").click();
  await page.waitForFunction(() => {
    const tr = Array.from(document.querySelectorAll("#key-table tbody tr")).find((r) => /browser-made/.test(r.textContent));
    return tr && /revoked/.test(tr.textContent);
  }, null, { timeout: 10_000 });
  assertEqual((await fetch(`${BASE}/v1/me`, { headers: { authorization: `Bearer ${second}` } })).status, 401, "a revoked key");
  // A test key: its submits run in testing mode.
  await page.fill("#key-name", "browser-test-key");
  await page.selectOption("#key-mode", "test");
  await page.click("#key-form button[type=submit]");
  await page.waitForFunction((old) => document.getElementById("key-secret-value").textContent !== old, second, { timeout: 10_000 });
  const testKey = await text(page, "#key-secret-value");
  const testRow = page.locator("#key-table tbody tr", { hasText: "browser-test-key" });
  await testRow.waitFor({ timeout: 10_000 });
  assert((await testRow.textContent()).includes("test"), "the row shows the mode");
  const sub = await rest("/v1/executions", {
    method: "POST",
    key: testKey,
    body: { model: "chat-default", idempotency_key: `browser-test-key-${Date.now()}`, messages: [{ role: "user", content: "hi" }] },
  });
  const done = await rest(`/v1/executions/${sub.id}`, { key: testKey });
  assertEqual(done.mode, "testing", "a test key's execution");
  await page.locator("#keys").screenshot({ path: join(ARTIFACTS, "keys.png") });
});

test("dashboard: dark mode toggles, persists and keeps the session", async () => {
  const light = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.click("#theme-toggle");
  assertEqual(await page.evaluate(() => document.documentElement.dataset.theme), "dark", "theme");
  assertEqual(await page.getAttribute("#theme-toggle", "aria-pressed"), "true", "toggle state");
  const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert(light !== dark, `the background changes (${light} → ${dark})`);
  await page.evaluate(() => window.scrollTo(0, 0));
  await shot(page, "dashboard-dark.png");
  // A reload keeps the theme, the signed-in session and the selected execution.
  const selected = await text(page, "#detail-id");
  await page.reload();
  await page.locator("#dashboard").waitFor({ timeout: 10_000 });
  assertEqual(await page.evaluate(() => document.documentElement.dataset.theme), "dark", "theme after reload");
  await page.locator("#detail-status[data-status='completed']").waitFor({ timeout: 10_000 });
  assertEqual(await text(page, "#detail-id"), selected, "selection restored");
  await page.click("#theme-toggle");
  assertEqual(await page.evaluate(() => document.documentElement.dataset.theme), "light", "back to light");
  await shot(page, "dashboard-light.png");
});

test("dashboard: sign out forgets the key", async () => {
  await page.click("#sign-out");
  await page.locator("#signin").waitFor();
  assertEqual(await page.evaluate(() => sessionStorage.getItem("switchyard.api_key")), null, "key removed");
  assertEqual(await page.locator("#executions tbody tr").count(), 0, "list cleared");
  assertEqual(pageErrors.length, 0, `no script errors on the page: ${pageErrors.join("; ")}`);
});

// ---- another origin ----

// A page server on its own port: `http://localhost:PORT` is listed in [cors], the same server
// reached as `http://127.0.0.1:PORT` is another origin that is not.
async function startForeignOrigin() {
  const server = createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end("<!doctype html><title>another origin</title><p>a page on another origin</p>");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  return {
    allowed: `http://localhost:${port}`,
    unlisted: `http://127.0.0.1:${port}`,
    close: () => new Promise((r) => server.close(r)),
  };
}

let FOREIGN;

test("cors: a page on another origin submits, follows over SSE and over the WebSocket channel", async () => {
  const other = await context.newPage();
  await other.goto(`${FOREIGN.allowed}/`);
  const got = await other.evaluate(async ({ base, key }) => {
    const auth = { Authorization: `Bearer ${key}` };
    const res = await fetch(`${base}/v1/executions`, {
      method: "POST",
      headers: { ...auth, "Content-Type": "application/json", "Idempotency-Key": "cors-1" },
      body: JSON.stringify({
        model: "chat-failover",
        idempotency_key: "cors-1",
        messages: [{ role: "user", content: "from another origin" }],
      }),
    });
    const sub = await res.json();
    // SSE with an Authorization header: a streamed fetch (EventSource cannot send headers).
    const sse = async () => {
      const r = await fetch(`${base}${sub.events_url}`, { headers: auth });
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let text = "";
      const seqs = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const field = (name) =>
            block.split("\n").find((l) => l.startsWith(`${name}:`))?.slice(name.length + 1).trim();
          const event = field("event");
          if (!event) continue;
          seqs.push(Number(field("id")));
          if (event === "chunk") text += JSON.parse(field("data")).delta;
          if (event === "done") {
            reader.cancel();
            return { text, seqs };
          }
        }
      }
      return { text, seqs };
    };
    const ws = () =>
      new Promise((resolve, reject) => {
        const socket = new WebSocket(`${sub.websocket_url}?token=${encodeURIComponent(sub.ws_token)}`);
        let text = "";
        socket.onopen = () =>
          socket.send(JSON.stringify({ action: "join", channel: sub.websocket_channel, after: 0 }));
        socket.onerror = () => reject(new Error("websocket error"));
        socket.onmessage = (msg) => {
          const frame = JSON.parse(msg.data);
          if (frame.event === "chunk") text += frame.data.delta;
          if (frame.event === "done") {
            socket.close();
            resolve(text);
          }
        };
      });
    const [overSse, overWs] = await Promise.all([sse(), ws()]);
    // A compat answer's execution id header is exposed to the page.
    const compat = await fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { ...auth, "Content-Type": "application/json" },
      body: JSON.stringify({ model: "chat-default", messages: [{ role: "user", content: "hi" }] }),
    });
    await compat.json();
    return { status: res.status, overSse, overWs, compatId: compat.headers.get("x-switchyard-execution-id") };
  }, { base: BASE, key: ADMIN_KEY });
  assertEqual(got.status, 202, "submit from another origin");
  assertEqual(got.overSse.text, FULL_TEXT, "the text over SSE");
  assert(got.overSse.seqs.every((seq, i) => seq === i + 1), `seqs without gaps: ${got.overSse.seqs}`);
  assertEqual(got.overWs, FULL_TEXT, "the text over the WebSocket channel");
  assert(/^exec_/.test(got.compatId || ""), `x-switchyard-execution-id readable: ${got.compatId}`);

  // The same page server under another name is an origin the config does not list.
  await other.goto(`${FOREIGN.unlisted}/`);
  const refused = await other.evaluate(async ({ base, key }) => {
    try {
      await fetch(`${base}/v1/models`, { headers: { Authorization: `Bearer ${key}` } });
      return "read";
    } catch (err) {
      return String(err);
    }
  }, { base: BASE, key: ADMIN_KEY });
  assert(refused.includes("TypeError") || refused.includes("Failed to fetch"), `an unlisted origin cannot read: ${refused}`);
  await other.close();
});

// ---- main ----

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  build();
  const work = mkdtempSync(join(tmpdir(), "switchyard-browser-"));
  let server;
  let upstream;
  let passed = 0;
  let failed = 0;
  try {
    upstream = await startFakeUpstream();
    FOREIGN = await startForeignOrigin();
    server = await startServer(work, upstream.baseUrl, FOREIGN.allowed);
    BASE = server.address;
    console.log(`server at ${BASE}, chromium at ${CHROMIUM}, artifacts in ${ARTIFACTS}`);
    context = await chromium.launchPersistentContext(join(work, "chromium-profile"), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      viewport: { width: 1400, height: 900 },
    });
    for (const t of tests) {
      const started = Date.now();
      try {
        await withTimeout(t.fn(), TEST_TIMEOUT_MS, t.name);
        passed += 1;
        console.log(`ok - ${t.name} (${Date.now() - started} ms)`);
      } catch (err) {
        failed += 1;
        console.log(`FAILED - ${t.name}: ${err.stack || err}`);
        const p = page && !page.isClosed() ? page : null;
        if (p) await shot(p, `failure-${failed}.png`).catch(() => {});
      }
    }
  } catch (err) {
    failed += 1;
    console.log(`FAILED - setup: ${err.stack || err}`);
  } finally {
    if (context) await context.close().catch(() => {});
    if (server) await stopServer(server.child);
    if (upstream) await upstream.close();
    if (FOREIGN) await FOREIGN.close();
    rmSync(work, { recursive: true, force: true });
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed === tests.length ? 0 : 1);
}

main();
