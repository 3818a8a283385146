"""The official `anthropic` Python SDK against a running switchyard (`POST /v1/messages`):
what users get when they point an Anthropic client's `base_url` at it, on routes of every wire
format.

This module starts its own gateway (the binary conftest.py finds) on a config of its own, with
fake upstreams speaking OpenAI's (fake_upstream.py), Anthropic's and Gemini's (fake_formats.py)
formats. Models: `oa`, `an`, `ge` answer the 12-word sequence on one route of that format;
`an-then-ge` and `oa-then-an` cut the stream after 3 words on the first route and continue on
the second; `too-long`, `limited` and `unreachable` answer 400 context length, 429 and
connection refused; `doomed` cuts its only route after 3 words.
"""

import json
import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path

import asyncio

import anthropic
import pytest

from fake_formats import SIGNATURE, THINKING, FakeAnthropic, FakeGemini
from fake_upstream import TOOL_ARGUMENTS, FakeUpstream, closed_port

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "sy_admin_anthropic_suite"
LISTENING = re.compile(r"listening on (http://\S+)")
PROMPT = [{"role": "user", "content": "Tell me about switchyards."}]
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}
FULL_TEXT = "".join(f"w{i} " for i in range(12))


def toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="module")
def upstreams():
    servers = {
        "oa": ("openai", FakeUpstream("ok", words=12)),
        "an": ("anthropic", FakeAnthropic("ok", words=12)),
        "ge": ("gemini", FakeGemini("ok", words=12)),
        "an-cut": ("anthropic", FakeAnthropic("cut", words=12, cut_after=3)),
        "oa-cut": ("openai", FakeUpstream("cut", words=12, cut_after=3)),
        "too-long": ("openai", FakeUpstream("context_length")),
        "limited": ("openai", FakeUpstream("rate_limited", retry_after=2)),
    }
    yield servers
    for _, server in servers.values():
        server.close()


def config(upstreams, data_dir):
    providers = {name: (kind, fake.base_url) for name, (kind, fake) in upstreams.items()}
    providers["refused"] = ("openai", f"http://127.0.0.1:{closed_port()}/v1")
    models = {
        "oa": ["oa"], "an": ["an"], "ge": ["ge"],
        "an-then-ge": ["an-cut", "ge"], "oa-then-an": ["oa-cut", "an"],
        "too-long": ["too-long"], "limited": ["limited"], "unreachable": ["refused"],
        "doomed": ["oa-cut"],
    }
    lines = ['listen = "127.0.0.1:0"', f"data_dir = {toml_str(str(data_dir))}"]
    for name, (kind, base_url) in providers.items():
        lines += ["", "[[providers]]", f"name = {toml_str(name)}", f"kind = {toml_str(kind)}",
                  f"base_url = {toml_str(base_url)}", "connect_timeout_ms = 2000",
                  "first_chunk_timeout_ms = 5000", "idle_timeout_ms = 5000",
                  "breaker_failures = 1000", "max_attempts = 1"]
    for slug, routes in models.items():
        joined = ", ".join(f"{{ provider = {toml_str(p)}, model = {toml_str('up-' + p)} }}"
                           for p in routes)
        lines += ["", "[[models]]", f"slug = {toml_str(slug)}", f"routes = [{joined}]"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def base_url(upstreams, tmp_path_factory):
    binary = Path(os.environ.get("SWITCHYARD_BIN") or REPO_ROOT / "target/debug/switchyard")
    if not binary.is_file():
        pytest.exit(f"switchyard binary not found at {binary}", returncode=2)
    work = tmp_path_factory.mktemp("switchyard-anthropic")
    config_path = work / "switchyard.toml"
    config_path.write_text(config(upstreams, work / "data"))
    env = dict(os.environ, SWITCHYARD_ADMIN_KEY=KEY, RUST_LOG="warn")
    env.pop("SWITCHYARD_CONFIG", None)
    with open(work / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            [str(binary), "--config", str(config_path), "--data-dir", str(work / "data"),
             "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=env, text=True)
    lines = queue.Queue()

    def drain():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    url = None
    try:
        while url is None:
            line = lines.get(timeout=30)
            if line is None:
                raise RuntimeError((work / "stderr.log").read_text()[-4000:])
            m = LISTENING.search(line)
            if m:
                url = m.group(1).rstrip("/")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(base_url):
    # The SDK appends /v1/messages to the base URL, as with Anthropic's own.
    return anthropic.Anthropic(base_url=base_url, api_key=KEY, max_retries=0, timeout=30)


FORMATS = ["oa", "an", "ge"]


@pytest.mark.parametrize("model", FORMATS)
def test_create_answers_a_message(client, model):
    msg = client.messages.create(model=model, max_tokens=256, system="be brief",
                                 messages=PROMPT)
    assert msg.type == "message"
    assert msg.id.startswith("msg_")
    assert msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == FULL_TEXT
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 12
    assert msg.model == f"up-{model}"


@pytest.mark.parametrize("model", FORMATS)
def test_stream_gives_the_text_and_the_final_message(client, model):
    with client.messages.stream(model=model, max_tokens=256, messages=PROMPT) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == FULL_TEXT
    assert final.content[0].text == FULL_TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 12
    # Known at the end only: `message_delta` carries it, the SDK takes it from there.
    assert final.usage.input_tokens > 0


def round_trip(client, model, streaming):
    ask = dict(model=model, max_tokens=256, messages=PROMPT, tools=[WEATHER],
               tool_choice={"type": "any"})
    if streaming:
        with client.messages.stream(**ask) as stream:
            msg = stream.get_final_message()
    else:
        msg = client.messages.create(**ask)
    assert msg.stop_reason == "tool_use"
    calls = [b for b in msg.content if b.type == "tool_use"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.input == json.loads(TOOL_ARGUMENTS)
    messages = PROMPT + [
        # The SDK's own objects, as Anthropic's docs append them.
        {"role": "assistant", "content": msg.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "12 degrees and sunny"}]},
    ]
    answer = client.messages.create(model=model, max_tokens=256, messages=messages,
                                    tools=[WEATHER])
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == FULL_TEXT


@pytest.mark.parametrize("model", FORMATS)
def test_tool_use_round_trip(client, model):
    round_trip(client, model, streaming=False)


@pytest.mark.parametrize("model", FORMATS)
def test_tool_use_round_trip_streamed(client, model):
    round_trip(client, model, streaming=True)


@pytest.mark.parametrize("model", ["an-then-ge", "oa-then-an"])
def test_a_mid_stream_failover_gives_the_exact_text(client, model):
    with client.messages.stream(model=model, max_tokens=256, messages=PROMPT) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == FULL_TEXT
    assert final.stop_reason == "end_turn"
    # `message_start` named the route the stream began on; the execution knows both tries.
    assert final.model == "up-" + model.split("-then-")[0] + "-cut"


def test_a_wrong_key_is_an_authentication_error(base_url):
    bad = anthropic.Anthropic(base_url=base_url, api_key="sy_wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad.messages.create(model="oa", max_tokens=16, messages=PROMPT)
    assert err.value.status_code == 401
    assert err.value.body["error"]["type"] == "authentication_error"


def test_bad_input_is_a_bad_request_naming_the_field(client):
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="oa", max_tokens=16, messages=PROMPT,
                               extra_body={"top_k": 5})
    assert "top_k" in err.value.message
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="nope", max_tokens=16, messages=PROMPT)
    assert "model" in err.value.message


def test_provider_errors_are_typed(client):
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="too-long", max_tokens=16, messages=PROMPT)
    assert err.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(model="limited", max_tokens=16, messages=PROMPT)
    assert int(err.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.OverloadedError) as err:
        with client.messages.stream(model="unreachable", max_tokens=16,
                                    messages=PROMPT) as stream:
            stream.until_done()
    assert err.value.status_code == 529


def test_count_tokens_is_an_estimate(client):
    res = client.messages.count_tokens(model="oa", messages=[{"role": "user",
                                                               "content": "x" * 400}])
    assert res.input_tokens == 100


def test_a_stream_that_fails_after_text_raises_the_error_event(client):
    received = []
    with pytest.raises(anthropic.APIStatusError) as err:
        with client.messages.stream(model="doomed", max_tokens=64, messages=PROMPT) as stream:
            for text in stream.text_stream:
                received.append(text)
    # Whatever came before the failure is a clean prefix of the answer.
    text = "".join(received)
    assert text and FULL_TEXT.startswith(text) and text != FULL_TEXT
    assert err.value.body["error"]["type"] == "api_error"


def test_the_async_client_streams_too(base_url):
    async def run():
        client = anthropic.AsyncAnthropic(base_url=base_url, api_key=KEY, max_retries=0)
        async with client.messages.stream(model="ge", max_tokens=64,
                                          messages=PROMPT) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        await client.close()
        return text, final

    text, final = asyncio.run(run())
    assert text == FULL_TEXT
    assert final.stop_reason == "end_turn"


def test_extended_thinking_comes_back_as_thinking_blocks(client):
    thinking = {"type": "enabled", "budget_tokens": 2048}
    msg = client.messages.create(model="an", max_tokens=4096, thinking=thinking,
                                 messages=PROMPT)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert (msg.content[0].thinking, msg.content[0].signature) == (THINKING, SIGNATURE)
    assert msg.content[1].text == FULL_TEXT
    with client.messages.stream(model="an", max_tokens=4096, thinking=thinking,
                                messages=PROMPT) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds
    assert final.content[0].thinking == THINKING
    # The blocks go back with the next turn, as the SDK's own objects.
    follow = client.messages.create(
        model="an", max_tokens=4096, thinking=thinking,
        messages=PROMPT + [{"role": "assistant", "content": msg.content},
                           {"role": "user", "content": "And then?"}])
    assert follow.content[-1].text == FULL_TEXT
