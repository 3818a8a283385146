"""The official `openai` Python SDK against a running switchyard: what users get when they point
an existing OpenAI client's `base_url` at it.

Models (see conftest.py): `chat-default` is the built-in mock (8 chunks, deterministic by
prompt); `flaky` is a fake OpenAI upstream that cuts its stream after 3 chunks, then a healthy
one that continues; `doomed` cuts on every route; `echo` records what reached it; `too-long`,
`limited` and `unreachable` answer 400 context length, 429 and connection refused.
"""

import asyncio
import json
import urllib.request

import openai
import pytest

from fake_upstream import JSON_ANSWER

PROMPT = [{"role": "user", "content": "Tell me about switchyards."}]


def get_json(base_url, key, path):
    req = urllib.request.Request(base_url + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


def stream_text(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- completions ----------------------------------------------------------------------------


def test_non_streaming_completion(client):
    res = client.chat.completions.create(model="chat-default", messages=PROMPT)
    assert res.object == "chat.completion"
    assert res.id.startswith("chatcmpl-")
    choice = res.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert len(choice.message.content.split()) == 8
    assert choice.finish_reason == "stop"
    # The upstream model that answered, as OpenAI-compatible gateways report it.
    assert res.model == "mock-1"
    assert res.usage.completion_tokens == 8
    assert res.usage.prompt_tokens > 0
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens


def test_streaming_gives_the_same_text_as_non_streaming(client):
    prompt = [{"role": "system", "content": "be brief"},
              {"role": "user", "content": "Stream me the same answer."}]
    plain = client.chat.completions.create(model="chat-default", messages=prompt)
    chunks = list(client.chat.completions.create(model="chat-default", messages=prompt,
                                                 stream=True))
    assert chunks, "the stream yielded no chunk"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert stream_text(chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    # Without include_usage, no chunk carries usage.
    assert all(c.usage is None for c in chunks)


def test_stream_options_include_usage_adds_a_final_usage_chunk(client):
    plain = client.chat.completions.create(model="chat-default", messages=PROMPT)
    chunks = list(client.chat.completions.create(
        model="chat-default", messages=PROMPT, stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 8
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert stream_text(chunks) == plain.choices[0].message.content


def test_streamed_chunks_name_the_upstream_model(client):
    chunks = list(client.chat.completions.create(model="chat-default", messages=PROMPT,
                                                 stream=True))
    assert {c.model for c in chunks} == {"mock-1"}


def test_async_client_streams_too(base_url, admin_key):
    async def run():
        async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=admin_key,
                                      max_retries=0, timeout=30) as client:
            plain = await client.chat.completions.create(model="chat-default", messages=PROMPT)
            stream = await client.chat.completions.create(model="chat-default",
                                                          messages=PROMPT, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
            return plain.choices[0].message.content, text

    plain, streamed = asyncio.run(run())
    assert streamed == plain


def test_raw_response_exposes_the_execution_id(client, base_url, admin_key):
    raw = client.chat.completions.with_raw_response.create(model="chat-default",
                                                          messages=PROMPT)
    assert raw.status_code == 200
    execution_id = raw.headers.get("x-switchyard-execution-id")
    assert execution_id and execution_id.startswith("exec_")
    completion = raw.parse()
    execution = get_json(base_url, admin_key, f"/v1/executions/{execution_id}")
    assert execution["id"] == execution_id
    assert execution["status"] == "completed"
    assert execution["model"] == "chat-default"
    assert execution["output"]["text"] == completion.choices[0].message.content
    assert execution["usage"]["total_tokens"] == completion.usage.total_tokens


def test_request_parameters_reach_the_upstream(client, fakes):
    res = client.chat.completions.create(
        model="echo",
        messages=[{"role": "system", "content": "sys"},
                  {"role": "user", "content": "params please"}],
        temperature=0.25, top_p=0.5, max_tokens=64, stop=["\n\n"], seed=7,
        presence_penalty=0.1, frequency_penalty=0.2,
        response_format={"type": "json_object"},
    )
    # Asked for JSON, the fake answers its JSON object (and the gateway validates it).
    assert res.choices[0].message.content == JSON_ANSWER
    assert res.model == "fake-recorder"
    sent = [r for r in fakes["recorder"].recorded()
            if r and r["messages"][-1]["content"] == "params please"]
    assert len(sent) == 1
    body = sent[0]
    assert body["model"] == "fake-recorder"
    # OpenAI refuses json_object unless a message says "JSON": the gateway adds a short
    # system instruction after the caller's own.
    assert [m["role"] for m in body["messages"]] == ["system", "system", "user"]
    assert "JSON" in body["messages"][1]["content"]
    assert body["temperature"] == 0.25
    assert body["top_p"] == 0.5
    assert body["max_tokens"] == 64
    assert body["stop"] == ["\n\n"]
    assert body["seed"] == 7
    assert body["presence_penalty"] == 0.1
    assert body["frequency_penalty"] == 0.2
    assert body["response_format"] == {"type": "json_object"}


# -- failover -------------------------------------------------------------------------------


def test_mid_stream_failover_streams_the_exact_text(client, fakes, base_url, admin_key):
    raw = client.chat.completions.with_raw_response.create(
        model="flaky", messages=PROMPT, stream=True, stream_options={"include_usage": True})
    execution_id = raw.headers["x-switchyard-execution-id"]
    chunks = list(raw.parse())
    text = stream_text(chunks)
    # w0 … w11, each exactly once, in order: nothing repeated or lost across the cut.
    assert text == fakes["healthy"].full_text()
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].usage is not None

    execution = get_json(base_url, admin_key, f"/v1/executions/{execution_id}")
    assert execution["status"] == "completed"
    assert execution["output"]["text"] == text
    attempts = execution["attempts"]
    assert [a["provider"] for a in attempts] == ["cutter", "healthy"]
    assert attempts[0]["outcome"] == "failed"
    assert attempts[0]["error_code"] == "stream_interrupted"
    assert attempts[0]["chunks_delivered"] == 3
    assert attempts[1]["outcome"] == "succeeded"
    assert attempts[1]["strategy"] == "instruction"
    # The healthy upstream was asked to continue after the 3 words already streamed.
    continued = fakes["healthy"].recorded()[-1]["messages"]
    assert continued[-2] == {"role": "assistant", "content": "w0 w1 w2 "}
    assert continued[-1]["role"] == "user"


def test_a_non_streaming_failover_answers_the_exact_text(client, fakes):
    res = client.chat.completions.create(model="flaky", messages=PROMPT)
    assert res.choices[0].message.content == fakes["healthy"].full_text()
    assert res.model == "fake-healthy"
    assert res.choices[0].finish_reason == "stop"


def test_a_stream_failing_on_every_route_raises_while_iterating(client):
    stream = client.chat.completions.create(model="doomed", messages=PROMPT, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    err = info.value
    assert not isinstance(err, openai.APIStatusError)  # the stream had started with 200
    assert err.body["code"] == "stream_interrupted"
    assert err.body["type"] == "server_error"
    assert err.message
    # Text arrived before the failure, and the stream never finished cleanly.
    assert stream_text(received).startswith("w0 w1 ")
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)


# -- models ---------------------------------------------------------------------------------


def test_models_list_has_the_configured_slugs(client):
    models = client.models.list()
    ids = [m.id for m in models]
    assert "chat-default" in ids
    assert "flaky" in ids
    assert all(m.object == "model" for m in models)


def test_models_retrieve(client):
    model = client.models.retrieve("chat-default")
    assert model.id == "chat-default"
    assert model.object == "model"


# -- embeddings -----------------------------------------------------------------------------


def test_embeddings_in_float_format(client):
    res = client.embeddings.create(model="chat-default", input=["one", "two"],
                                   encoding_format="float")
    assert res.object == "list"
    assert [e.index for e in res.data] == [0, 1]
    assert all(e.object == "embedding" for e in res.data)
    for e in res.data:
        assert len(e.embedding) == 8
        assert abs(sum(x * x for x in e.embedding) - 1.0) < 1e-3  # the mock's unit vectors
    assert res.data[0].embedding != res.data[1].embedding
    assert res.model == "mock-1"
    assert res.usage.total_tokens == res.usage.prompt_tokens > 0
    again = client.embeddings.create(model="chat-default", input="one", encoding_format="float")
    assert again.data[0].embedding == res.data[0].embedding


def test_embeddings_with_the_sdks_default_encoding(client):
    res = client.embeddings.create(model="chat-default", input="one")
    assert len(res.data[0].embedding) == 8
    floats = client.embeddings.create(model="chat-default", input="one", encoding_format="float")
    assert res.data[0].embedding == pytest.approx(floats.data[0].embedding)
    short = client.embeddings.create(model="chat-default", input="one", dimensions=4)
    assert len(short.data[0].embedding) == 4


def test_embeddings_unknown_model_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="no-such-model", input="one", encoding_format="float")
    assert info.value.code == "invalid_request"


# -- errors ---------------------------------------------------------------------------------


def test_wrong_key_raises_authentication_error(base_url):
    bad = openai.OpenAI(base_url=base_url + "/v1", api_key="sy_wrong_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="chat-default", messages=PROMPT)
    assert info.value.status_code == 401
    assert info.value.code == "unauthorized"
    assert info.value.type == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_model_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="no-such-model", messages=PROMPT)
    assert info.value.status_code == 400
    assert info.value.code == "invalid_request"
    assert info.value.type == "invalid_request_error"
    assert "no-such-model" in info.value.message


def test_unknown_model_is_rejected_before_a_stream_starts(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="no-such-model", messages=PROMPT, stream=True)


def test_context_length_raises_bad_request_with_its_code(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="too-long", messages=PROMPT)
    assert info.value.status_code == 400
    assert info.value.code == "context_length_exceeded"
    assert "context length" in info.value.message


def test_persistent_rate_limit_raises_rate_limit_error(client):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="limited", messages=PROMPT)
    assert info.value.status_code == 429
    assert info.value.code == "rate_limited"
    assert info.value.type == "rate_limit_error"
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_refused_upstream_raises_internal_server_error_503(client):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="unreachable", messages=PROMPT)
    assert info.value.status_code == 503
    assert info.value.code == "provider_unavailable"


def test_streamed_rate_limit_before_any_chunk_raises_rate_limit_error(client):
    with pytest.raises(openai.RateLimitError):
        for _ in client.chat.completions.create(model="limited-stream", messages=PROMPT,
                                                stream=True):
            pass


def test_streamed_context_length_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError):
        for _ in client.chat.completions.create(model="too-long", messages=PROMPT,
                                                stream=True):
            pass


def test_n_greater_than_one_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat-default", messages=PROMPT, n=2)
    assert info.value.status_code == 400
    assert "n" in info.value.message


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def test_tools_round_trip_non_streaming(client, fakes):
    question = [{"role": "user", "content": "What is the weather in Oslo?"}]
    first = client.chat.completions.create(model="echo", messages=question,
                                           tools=[WEATHER_TOOL], tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo", "unit": "celsius"}

    # The SDK's own message object goes back as the assistant turn, then the tool's result.
    follow_up = question + [choice.message,
                            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'}]
    second = client.chat.completions.create(model="echo", messages=follow_up,
                                            tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == fakes["recorder"].full_text()
    assert second.choices[0].message.tool_calls is None

    sent = [r for r in fakes["recorder"].recorded()
            if r and r["messages"][-1].get("role") == "tool"]
    assert len(sent) == 1
    messages = sent[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["content"] is None
    assert messages[1]["tool_calls"][0]["id"] == call.id
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == call.function.arguments
    assert messages[2] == {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'}
    assert sent[0]["tools"] == [WEATHER_TOOL]


def test_tools_round_trip_streaming_with_the_sdk_stream_helper(client):
    question = [{"role": "user", "content": "Stream me a tool call."}]
    # The SDK's stream helper rebuilds the message (tool calls included) from the deltas.
    with client.chat.completions.stream(model="echo", messages=question, tools=[WEATHER_TOOL],
                                        tool_choice={"type": "function",
                                                     "function": {"name": "get_weather"}}
                                        ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo", "unit": "celsius"}


def test_tools_on_the_mock_need_no_upstream(client):
    res = client.chat.completions.create(model="chat-default", messages=PROMPT,
                                         tools=[WEATHER_TOOL])
    [call] = res.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": PROMPT[0]["content"]}


def test_a_tool_result_without_its_call_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="chat-default", tools=[WEATHER_TOOL],
            messages=PROMPT + [{"role": "tool", "tool_call_id": "call_nowhere", "content": "x"}])
    assert info.value.status_code == 400
    assert "tool_call_id" in info.value.message
