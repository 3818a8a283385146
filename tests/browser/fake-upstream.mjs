// A tiny OpenAI-compatible upstream on 127.0.0.1:0 for the browser suite's failover scene.
//
// It always answers the same ten words, one per SSE chunk, and continues a request that
// carries an assistant prefix from where that prefix ends. Upstream model `flaky-1` cuts the
// connection after three chunks when it is asked from the start; `steady-1` never fails.

import { createServer } from "node:http";

export const WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"].map((w) => w + " ");
export const FULL_TEXT = WORDS.join("");
const CUT_AFTER = 3;
const CHUNK_DELAY_MS = 120;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function chunk(model, delta, finish) {
  return `data: ${JSON.stringify({
    id: "chatcmpl-fake",
    object: "chat.completion.chunk",
    created: 1700000000,
    model,
    choices: [{ index: 0, delta: delta === null ? {} : { content: delta }, finish_reason: finish }],
  })}\n\n`;
}

async function answer(req, res) {
  let raw = "";
  for await (const part of req) raw += part;
  const body = JSON.parse(raw);
  const messages = body.messages || [];
  const prefix = [...messages].reverse().find((m) => m.role === "assistant");
  const start = prefix ? prefix.content.split(/\s+/).filter(Boolean).length : 0;
  const cut = body.model === "flaky-1" && start === 0;
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  const words = WORDS.slice(start, cut ? CUT_AFTER : WORDS.length);
  for (const word of words) {
    await sleep(CHUNK_DELAY_MS);
    res.write(chunk(body.model, word, null));
  }
  if (cut) {
    await sleep(CHUNK_DELAY_MS);
    res.socket.destroy(); // no finish reason, no [DONE]: the stream was interrupted
    return;
  }
  const prompt = messages.reduce((n, m) => n + String(m.content).split(/\s+/).filter(Boolean).length, 0);
  res.write(chunk(body.model, null, "stop"));
  res.write(`data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: prompt, completion_tokens: words.length, total_tokens: prompt + words.length } })}\n\n`);
  res.end("data: [DONE]\n\n");
}

/** Starts the server; resolves with its base URL (`http://127.0.0.1:PORT/v1`) and a closer. */
export function startFakeUpstream() {
  const server = createServer((req, res) => {
    if (req.method === "POST" && req.url === "/v1/chat/completions") {
      answer(req, res).catch(() => res.destroy());
    } else {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: "not found", type: "invalid_request_error" } }));
    }
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      resolve({
        baseUrl: `http://127.0.0.1:${port}/v1`,
        close: () => new Promise((r) => {
          server.closeAllConnections();
          server.close(r);
        }),
      });
    });
  });
}
