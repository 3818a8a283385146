"""Small fake upstreams (stdlib only) speaking the Anthropic Messages and Gemini
`streamGenerateContent` wire formats, for routing the Anthropic SDK suite to routes of every
format. Streaming only, as Switchyard always asks upstream for a stream.

Like fake_upstream.py, every answer is the known word sequence "w0 ", "w1 ", ..., one word per
event, and a conversation whose last assistant (`model`) text is a chunk-aligned prefix of it is
continued after that prefix, so a failover's result can be compared with `full_text()`.
Anthropic's continuation is a prefill without its trailing space: the answer then starts with
the space, as a model's would.

Modes: "ok"; "cut" (`cut_after` text events, then the connection is closed mid-body).
Offered tools (and not answering a tool result), they call one instead: the one `tool_choice`
names, else the first, with `TOOL_ARGUMENTS`. Asked for extended thinking
(`thinking: {"type": "enabled"}`), the Anthropic fake first streams a thinking block
(`THINKING` in two `thinking_delta`s, then a `signature_delta` of `SIGNATURE`).
"""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fake_upstream import TOOL_ARGUMENTS, word


THINKING = "Let me think about this."
SIGNATURE = "sig_fake_python"


def prefix(k):
    return "".join(word(i) for i in range(k))


def aligned(text, words):
    """How many whole words `text` holds when it is a prefix of the sequence (else 0)."""
    for k in range(words, 0, -1):
        if text == prefix(k) or text == prefix(k).rstrip():
            return k
    return 0


class _Fake:
    path_suffix = ""

    def __init__(self, mode="ok", words=12, cut_after=3):
        self.mode = mode
        self.words = words
        self.cut_after = cut_after
        self.requests = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with fake._lock:
                    fake.requests.append(body)
                if self.path.split("?")[0].endswith(fake.path_suffix):
                    fake._answer(self, body)
                else:
                    fake._json(self, 404, {"error": "unknown path"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def full_text(self):
        return prefix(self.words)

    def recorded(self):
        with self._lock:
            return list(self.requests)

    def close(self):
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def _json(h, status, payload):
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _sse(h):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(text):
            data = text.encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        return send

    @staticmethod
    def _end(h):
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    @staticmethod
    def _cut(h):
        h.wfile.flush()
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        h.close_connection = True


def _texts(content):
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if b.get("type") == "text")


class FakeAnthropic(_Fake):
    """`POST /v1/messages`, streaming."""

    path_suffix = "/messages"

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def _answer(self, h, body):
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        start = aligned(_texts(last.get("content")), self.words) \
            if last.get("role") == "assistant" else 0
        send = self._sse(h)

        def event(name, data):
            data["type"] = name
            send(f"event: {name}\ndata: {json.dumps(data)}\n\n")

        event("message_start", {"message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "content": [],
            "model": body.get("model"), "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}})
        index = 0
        if (body.get("thinking") or {}).get("type") == "enabled":
            event("content_block_start", {"index": 0, "content_block": {
                "type": "thinking", "thinking": ""}})
            for piece in (THINKING[:8], THINKING[8:]):
                event("content_block_delta", {"index": 0, "delta": {
                    "type": "thinking_delta", "thinking": piece}})
            event("content_block_delta", {"index": 0, "delta": {
                "type": "signature_delta", "signature": SIGNATURE}})
            event("content_block_stop", {"index": 0})
            index = 1
        tool = self._tool(body, last)
        if tool:
            event("content_block_start", {"index": index, "content_block": {
                "type": "tool_use", "id": "toolu_fake_1", "name": tool, "input": {}}})
            half = len(TOOL_ARGUMENTS) // 2
            for piece in (TOOL_ARGUMENTS[:half], TOOL_ARGUMENTS[half:]):
                event("content_block_delta", {"index": index, "delta": {
                    "type": "input_json_delta", "partial_json": piece}})
            event("content_block_stop", {"index": index})
            stop, sent = "tool_use", 1
        else:
            event("content_block_start", {"index": index,
                                          "content_block": {"type": "text", "text": ""}})
            sent = 0
            for i in range(start, self.words):
                if self.mode == "cut" and sent == self.cut_after:
                    return self._cut(h)
                text = (" " if start and sent == 0 else "") + word(i)
                event("content_block_delta", {"index": index,
                                              "delta": {"type": "text_delta", "text": text}})
                sent += 1
            if self.mode == "cut":
                return self._cut(h)
            event("content_block_stop", {"index": index})
            stop = "end_turn"
        event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                "usage": {"output_tokens": sent}})
        event("message_stop", {})
        self._end(h)

    @staticmethod
    def _tool(body, last):
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        content = last.get("content")
        answering = isinstance(content, list) and any(
            b.get("type") == "tool_result" for b in content)
        if not tools or answering or choice.get("type") == "none":
            return None
        return choice.get("name") if choice.get("type") == "tool" else tools[0]["name"]


class FakeGemini(_Fake):
    """`POST /v1beta/models/{model}:streamGenerateContent?alt=sse`."""

    path_suffix = ":streamGenerateContent"

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1beta"

    def _answer(self, h, body):
        contents = body.get("contents") or []
        model_turns = [c for c in contents[-2:] if c.get("role") == "model"]
        start = 0
        if model_turns:
            text = "".join(p.get("text", "") for p in model_turns[-1].get("parts", []))
            start = aligned(text, self.words)
        send = self._sse(h)

        def chunk(parts, finish=None, completion=0):
            candidate = {"content": {"parts": parts, "role": "model"}, "index": 0}
            if finish:
                candidate["finishReason"] = finish
            send("data: " + json.dumps({
                "candidates": [candidate],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": completion,
                                  "totalTokenCount": 10 + completion}}) + "\r\n\r\n")

        tool = self._tool(body, contents)
        sent = 0
        if tool:
            chunk([{"functionCall": {"name": tool, "args": json.loads(TOOL_ARGUMENTS)}}],
                  completion=1)
            sent = 1
        else:
            for i in range(start, self.words):
                if self.mode == "cut" and sent == self.cut_after:
                    return self._cut(h)
                chunk([{"text": word(i)}], completion=sent + 1)
                sent += 1
            if self.mode == "cut":
                return self._cut(h)
        chunk([{"text": ""}], finish="STOP", completion=sent)
        self._end(h)

    @staticmethod
    def _tool(body, contents):
        declared = [f["name"] for t in body.get("tools") or []
                    for f in t.get("functionDeclarations") or []]
        config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        answering = contents and any("functionResponse" in p
                                     for p in contents[-1].get("parts", []))
        if not declared or answering or config.get("mode") == "NONE":
            return None
        return (config.get("allowedFunctionNames") or declared)[0]
