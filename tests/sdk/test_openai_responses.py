"""The official `openai` Python SDK's Responses API (`client.responses`) against a running
switchyard: create (plain, streamed, with tools, with a JSON schema), background mode cut off
and resumed with `starting_after` (also from a new process after a SIGKILL), and the typed
errors.

Models are conftest.py's (`chat-default` is the built-in mock; `flaky` cuts its stream after 3
chunks and continues on a healthy fake), except for the tests that read what reached the
upstream: they run against a gateway of their own (`own`), whose `echo` records into a fake no
other test shares.
"""

import os
import re
import subprocess
import threading

import openai
import pytest

from conftest import REPO_ROOT
from fake_upstream import JSON_ANSWER, TOOL_ARGUMENTS, FakeUpstream

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
}


def deltas(events):
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def sent_to(fake, last_text):
    """The requests that reached `fake` whose last message has this text."""
    def text(message):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    return [r for r in fake.recorded() if r and text(r["messages"][-1]) == last_text]


def test_create_answers_a_response_object(client):
    res = client.responses.create(model="chat-default", instructions="be brief",
                                  input="Tell me about switchyards.")
    assert res.object == "response"
    assert res.id.startswith("resp_")
    assert res.status == "completed"
    assert res.model == "chat-default"
    assert res.instructions == "be brief"
    assert len(res.output) == 1
    message = res.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert len(res.output_text.split()) == 8
    assert res.usage.output_tokens == 8
    assert res.usage.total_tokens == res.usage.input_tokens + res.usage.output_tokens
    # Polled later: the same response.
    again = client.responses.retrieve(res.id)
    assert again.status == "completed"
    assert again.output_text == res.output_text
    items = client.responses.input_items.list(res.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "Tell me about switchyards."


def test_a_stream_is_openais_event_sequence(client):
    events = list(client.responses.create(model="chat-default", input="Stream it.",
                                          stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert deltas(events) == final.output_text
    assert final.output_text == client.responses.retrieve(final.id).output_text


def test_the_stream_helper_accumulates_the_response(client):
    with client.responses.stream(model="chat-default", input="Helper, please.") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == text


def test_a_function_call_round_trip(own):
    client = own.client
    first = client.responses.create(model="echo", input="Weather in Oslo?", tools=[WEATHER])
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.arguments == TOOL_ARGUMENTS
    second = client.responses.create(
        model="echo", tools=[WEATHER], previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": '{"celsius": 21}'}])
    assert second.status == "completed"
    assert second.output_text == own.recorder.full_text()
    sent = [r for r in own.recorder.recorded()
            if r and r["messages"][-1].get("role") == "tool"
            and r["messages"][-1].get("tool_call_id") == call.call_id]
    assert len(sent) == 1
    roles = [m["role"] for m in sent[0]["messages"]]
    assert roles == ["user", "assistant", "tool"]
    assert sent[0]["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_streamed_function_call(own):
    events = list(own.client.responses.create(model="echo", input="Weather, streamed?",
                                          tools=[WEATHER], stream=True))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == TOOL_ARGUMENTS
    assert events[-1].response.output[0].type == "function_call"


def test_text_format_json_schema_goes_upstream(own):
    client = own.client
    schema = {"type": "object", "properties": {"title": {"type": "string"}},
              "required": ["title"], "additionalProperties": False}
    res = client.responses.create(
        model="echo", input="A todo as JSON, please.",
        text={"format": {"type": "json_schema", "name": "todo", "schema": schema,
                         "strict": True}})
    assert res.status == "completed"
    assert res.text.format.type == "json_schema"
    assert res.text.format.name == "todo"
    assert res.output_text == JSON_ANSWER
    sent = sent_to(own.recorder, "A todo as JSON, please.")
    assert len(sent) == 1
    assert sent[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "todo", "schema": schema, "strict": True},
    }


def test_a_background_stream_cut_off_and_resumed(client, fakes):
    stream = client.responses.create(model="flaky", input="Resume me.", background=True,
                                     stream=True)
    seen = []
    for event in stream:
        seen.append(event)
        if len(seen) == 6:
            break
    stream.close()
    assert seen[0].type == "response.created"
    assert seen[0].response.status == "queued"
    assert seen[0].response.background is True
    response_id = seen[0].response.id
    last = seen[-1].sequence_number
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    # The route failed over mid-stream: invisible, but for the continued, exact text.
    assert deltas(events) == fakes["healthy"].full_text()
    assert client.responses.retrieve(response_id).output_text == fakes["healthy"].full_text()
    # Polling a background response.
    polled = client.responses.create(model="chat-default", input="Poll me.", background=True)
    assert polled.status in ("queued", "in_progress", "completed")
    for _ in range(500):
        polled = client.responses.retrieve(polled.id)
        if polled.status == "completed":
            break
    assert polled.status == "completed"


def test_cancel_and_delete(client):
    res = client.responses.create(model="chat-default", input="Delete me.")
    with pytest.raises(openai.APIStatusError) as err:
        client.responses.cancel(res.id)
    assert err.value.status_code == 409
    client.responses.delete(res.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(res.id)


def test_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_does_not_exist")
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="chat-default", input="x", extra_body={"bogus": 1})
    assert "bogus" in err.value.message
    res = client.responses.create(model="chat-default", input="x")
    with pytest.raises(openai.BadRequestError) as err:
        list(client.responses.retrieve(res.id, stream=True, starting_after=10_000))
    assert "starting_after" in err.value.message


# -- across a restart -------------------------------------------------------------------------


ADMIN_KEY = "sy_admin_responses_restart"


class Gateway:
    """A switchyard of its own, on `config`: `slow` is a mock slow enough for a stream to be
    still running when the process is killed (the session's gateway must survive)."""

    SLOW = "\n".join([
        'listen = "127.0.0.1:0"',
        'data_dir = "unused"  # --data-dir decides',
        "",
        "[[providers]]",
        'name = "mock"',
        'kind = "mock"',
        "mock_chunks = 150",
        "mock_chunk_interval_ms = 10",
        "",
        "[[models]]",
        'slug = "slow"',
        'routes = [{ provider = "mock", model = "mock-1" }]',
        "",
    ])

    def __init__(self, work, config=SLOW):
        binary = os.environ.get("SWITCHYARD_BIN") or str(REPO_ROOT / "target/debug/switchyard")
        config_path = work / "switchyard.toml"
        config_path.write_text(config)
        env = dict(os.environ, SWITCHYARD_ADMIN_KEY=ADMIN_KEY, RUST_LOG="warn")
        env.pop("SWITCHYARD_CONFIG", None)
        self.proc = subprocess.Popen(
            [binary, "--config", str(config_path), "--data-dir", str(work / "data"),
             "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env=env, text=True)
        for line in self.proc.stdout:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1).rstrip("/")
                break
        else:
            raise RuntimeError(f"switchyard exited with {self.proc.wait()}")
        # Keep reading stdout so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=ADMIN_KEY,
                                    max_retries=0, timeout=30)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A gateway whose `echo` routes to a recording fake of this module's own."""
    recorder = FakeUpstream("ok", words=5)
    config = Gateway.SLOW + "\n".join([
        "",
        "[[providers]]",
        'name = "recorder"',
        'kind = "openai"',
        f'base_url = "{recorder.base_url}"',
        "",
        "[[models]]",
        'slug = "echo"',
        'routes = [{ provider = "recorder", model = "fake-recorder" }]',
        "",
    ])
    gateway = Gateway(tmp_path_factory.mktemp("own"), config)
    gateway.recorder = recorder
    yield gateway
    gateway.kill()
    recorder.close()


def test_a_background_stream_resumes_after_the_gateway_is_killed(tmp_path):
    first = Gateway(tmp_path)
    try:
        stream = first.client.responses.create(model="slow", input="Survive a crash.",
                                               background=True, stream=True)
        seen = []
        for event in stream:
            seen.append(event)
            if len(seen) == 30:
                break
    finally:
        first.kill()
    assert seen[-1].type == "response.output_text.delta", "still streaming when killed"
    response_id = seen[0].response.id

    second = Gateway(tmp_path)
    try:
        rest = list(second.client.responses.retrieve(
            response_id, stream=True, starting_after=seen[-1].sequence_number))
        events = seen + rest
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].type == "response.completed"
        # The mock is deterministic by prompt: the same question asked afresh.
        fresh = second.client.responses.create(model="slow", input="Survive a crash.")
        assert deltas(events) == fresh.output_text
        assert second.client.responses.retrieve(response_id).output_text == fresh.output_text
    finally:
        second.kill()
