"""A small fake OpenAI-compatible upstream (stdlib only) for the SDK suite's failover and error
tests.

Every answer is the same known word sequence, one word per chunk: "w0 ", "w1 ", ... A request
whose last message is an assistant message that is a chunk-aligned prefix of that sequence
(prefill), or whose last two messages are such an assistant message and a user message (the
`instruction` continuation), is answered with the rest of the sequence. So a test can compare
what a client received with `full_text()` to prove nothing was repeated or lost in a failover.

Modes:
- "ok": a complete `chat.completion.chunk` stream ending with a finish reason, the usage chunk
  when asked for, and `data: [DONE]`; or a `chat.completion` object when `stream` is false.
- "cut": `cut_after` content chunks, then the socket is closed without the terminating HTTP chunk,
  finish reason or `[DONE]`.
- "context_length": 400 with OpenAI's `context_length_exceeded` body.
- "rate_limited": 429 with `Retry-After` and OpenAI's rate limit body, every time.

In "ok" mode a request that offers `tools` and does not end with a tool result is answered with a
call instead of text: the function named by `tool_choice`, else the first tool, with
`TOOL_ARGUMENTS` (streamed in three argument fragments), finish reason `tool_calls`.
"""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CREATED = 1_700_000_000
TOOL_ARGUMENTS = '{"city": "Oslo", "unit": "celsius"}'
TOOL_CALL_ID = "call_fake_1"


# What the fake answers a request for JSON (`response_format` json_object or json_schema):
# an object valid for the todo schemas the tests ask for.
JSON_ANSWER = '{"title": "Buy milk"}'


def word(i):
    return f"w{i} "


def error_body(message, kind, param, code):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


CONTEXT_LENGTH_BODY = error_body(
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9000 tokens. Please reduce the length of the messages.",
    "invalid_request_error",
    "messages",
    "context_length_exceeded",
)

RATE_LIMIT_BODY = error_body(
    "Rate limit reached for requests. Please try again in 1s.",
    "requests",
    None,
    "rate_limit_exceeded",
)


def message_text(message):
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def tool_to_call(body):
    """The function this request makes the fake call, or None."""
    tools = body.get("tools") or []
    messages = body.get("messages") or []
    choice = body.get("tool_choice")
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return None
    if isinstance(choice, dict):
        return choice["function"]["name"]
    return tools[0]["function"]["name"]


def continuation_start(messages, words):
    """How many whole chunks the continued assistant text already holds (0 if none)."""
    roles = [m.get("role") for m in messages]
    if roles[-1:] == ["assistant"]:
        assistant = messages[-1]
    elif roles[-2:] == ["assistant", "user"]:
        assistant = messages[-2]
    else:
        return 0
    text = message_text(assistant)
    prefix = ""
    for k in range(words + 1):
        if text == prefix or (k > 0 and text.rstrip() == prefix.rstrip()):
            return k
        if k < words:
            prefix += word(k)
    return 0


class FakeUpstream:
    def __init__(self, mode="ok", words=12, cut_after=3, retry_after=1):
        self.mode = mode
        self.words = words
        self.cut_after = cut_after
        self.retry_after = retry_after
        self.requests = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def full_text(self):
        return "".join(word(i) for i in range(self.words))

    def recorded(self):
        with self._lock:
            return list(self.requests)

    def close(self):
        self._server.shutdown()
        self._server.server_close()

    # -- HTTP ------------------------------------------------------------------------------

    def _handle(self, h):
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(body)
        if not h.path.endswith("/chat/completions"):
            return self._json(h, 404, error_body("Unknown request URL", "invalid_request_error",
                                                 None, "unknown_url"))
        if not isinstance(body, dict):
            return self._json(h, 400, error_body("We could not parse the JSON body of your "
                                                 "request.", "invalid_request_error", None, None))
        if self.mode == "context_length":
            return self._json(h, 400, CONTEXT_LENGTH_BODY)
        if self.mode == "rate_limited":
            return self._json(h, 429, RATE_LIMIT_BODY,
                              {"Retry-After": str(self.retry_after)})
        model = body.get("model", "fake-model")
        messages = body.get("messages") or []
        start = continuation_start(messages, self.words)
        prompt_tokens = sum(len(message_text(m).split()) for m in messages)
        tool = tool_to_call(body)
        if tool is not None:
            return self._tool_call(h, model, tool, bool(body.get("stream")))
        if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            return self._json_answer(h, model, bool(body.get("stream")))
        if not body.get("stream"):
            return self._plain(h, model, start, prompt_tokens)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._stream(h, model, start, prompt_tokens, include_usage)

    def _json(self, h, status, payload, headers=None):
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    def _plain(self, h, model, start, prompt_tokens):
        text = "".join(word(i) for i in range(start, self.words))
        self._json(h, 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": self.words - start,
                      "total_tokens": prompt_tokens + self.words - start},
        })

    @staticmethod
    def _sse_head(h):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(payload):
            data = f"data: {payload}\n\n".encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        return chunk

    @staticmethod
    def _event(model, delta, finish_reason=None):
        return json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED,
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}],
        })

    def _json_answer(self, h, model, stream):
        if not stream:
            return self._json(h, 200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": JSON_ANSWER},
                             "finish_reason": "stop"}],
            })
        chunk = self._sse_head(h)
        half = len(JSON_ANSWER) // 2
        chunk(self._event(model, {"role": "assistant", "content": JSON_ANSWER[:half]}))
        chunk(self._event(model, {"content": JSON_ANSWER[half:]}))
        chunk(self._event(model, {}, "stop"))
        chunk("[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def _tool_call(self, h, model, name, stream):
        call = {"id": TOOL_CALL_ID, "type": "function",
                "function": {"name": name, "arguments": TOOL_ARGUMENTS}}
        if not stream:
            return self._json(h, 200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                                     "tool_calls": [call]},
                             "finish_reason": "tool_calls"}],
            })
        chunk = self._sse_head(h)
        third = len(TOOL_ARGUMENTS) // 3
        pieces = [TOOL_ARGUMENTS[:third], TOOL_ARGUMENTS[third:2 * third],
                  TOOL_ARGUMENTS[2 * third:]]
        first = {"index": 0, "id": TOOL_CALL_ID, "type": "function",
                 "function": {"name": name, "arguments": pieces[0]}}
        chunk(self._event(model, {"role": "assistant", "content": None, "tool_calls": [first]}))
        for piece in pieces[1:]:
            chunk(self._event(model, {"tool_calls": [{"index": 0,
                                                      "function": {"arguments": piece}}]}))
        chunk(self._event(model, {}, "tool_calls"))
        chunk("[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def _stream(self, h, model, start, prompt_tokens, include_usage):
        chunk = self._sse_head(h)

        def event(delta, finish_reason=None):
            return self._event(model, delta, finish_reason)

        sent = 0
        for i in range(start, self.words):
            if self.mode == "cut" and sent == self.cut_after:
                return self._cut(h)
            delta = {"content": word(i)}
            if sent == 0:
                delta["role"] = "assistant"
            chunk(event(delta))
            sent += 1
        if self.mode == "cut":
            return self._cut(h)
        chunk(event({} if sent else {"role": "assistant", "content": ""}, "stop"))
        if include_usage:
            chunk(json.dumps({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED,
                "model": model, "system_fingerprint": None, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sent,
                          "total_tokens": prompt_tokens + sent},
            }))
        chunk("[DONE]")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    @staticmethod
    def _cut(h):
        """Close the connection mid-body: no terminating chunk, no finish reason, no [DONE]."""
        h.wfile.flush()
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        h.close_connection = True


def closed_port():
    """A port on 127.0.0.1 with nothing listening (connection refused)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
