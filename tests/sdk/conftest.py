"""Starts the real `switchyard` binary once per session, on a config written here, next to the
fake upstreams of fake_upstream.py.

The binary is `$SWITCHYARD_BIN`, or `target/debug/switchyard` under the repository root.
"""

import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path

import openai
import pytest

from fake_upstream import FakeUpstream, closed_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "sy_admin_sdk_suite"
START_TIMEOUT_S = 30
LISTENING = re.compile(r"listening on (http://\S+)")

# Model slug -> the routes' (provider, upstream model); see config() for the providers.
MODELS = {
    "chat-default": [("mock", "mock-1")],
    "flaky": [("cutter", "fake-cutter"), ("healthy", "fake-healthy")],
    "doomed": [("doomed-a", "fake-doomed-a"), ("doomed-b", "fake-doomed-b")],
    "echo": [("recorder", "fake-recorder")],
    "too-long": [("too-long", "fake-small-context")],
    "limited": [("limited", "fake-limited")],
    # A 429 cools its route until the Retry-After: each test about it has its own route.
    "limited-stream": [("limited-stream", "fake-limited-stream")],
    "unreachable": [("refused", "fake-refused")],
}


@pytest.fixture(scope="session")
def fakes():
    servers = {
        # Cuts every stream after 3 chunks; `flaky` then continues on `healthy`.
        "cutter": FakeUpstream("cut", words=12, cut_after=3),
        "healthy": FakeUpstream("ok", words=12),
        # Both routes of `doomed` cut every stream, continuations included.
        "doomed-a": FakeUpstream("cut", words=40, cut_after=2),
        "doomed-b": FakeUpstream("cut", words=40, cut_after=2),
        "recorder": FakeUpstream("ok", words=5),
        "too-long": FakeUpstream("context_length"),
        "limited": FakeUpstream("rate_limited", retry_after=1),
        "limited-stream": FakeUpstream("rate_limited", retry_after=1),
    }
    yield servers
    for server in servers.values():
        server.close()


def config(fakes, data_dir):
    lines = [
        'listen = "127.0.0.1:0"',
        f"data_dir = {toml_str(str(data_dir))}",
        "",
        "[[providers]]",
        'name = "mock"',
        'kind = "mock"',
        "mock_chunks = 8",
        "mock_chunk_interval_ms = 1",
    ]
    upstreams = {name: fake.base_url for name, fake in fakes.items()}
    upstreams["refused"] = f"http://127.0.0.1:{closed_port()}/v1"
    # One try per route where the test is about the route's answer, not about retries.
    single_try = {"cutter", "limited", "limited-stream", "refused"}
    for name, base_url in upstreams.items():
        lines += [
            "",
            "[[providers]]",
            f"name = {toml_str(name)}",
            'kind = "openai"',
            f"base_url = {toml_str(base_url)}",
            "connect_timeout_ms = 2000",
            "first_chunk_timeout_ms = 5000",
            "idle_timeout_ms = 5000",
            # Keep the breakers closed however often the suite fails a provider.
            "breaker_failures = 1000",
        ]
        if name in single_try:
            lines.append("max_attempts = 1")
    for slug, routes in MODELS.items():
        joined = ", ".join(
            f"{{ provider = {toml_str(p)}, model = {toml_str(m)} }}" for p, m in routes
        )
        lines += ["", "[[models]]", f"slug = {toml_str(slug)}", f"routes = [{joined}]"]
    return "\n".join(lines) + "\n"


def toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="session")
def base_url(fakes, tmp_path_factory):
    """The base URL of a running switchyard (no `/v1`)."""
    binary = Path(os.environ.get("SWITCHYARD_BIN") or REPO_ROOT / "target/debug/switchyard")
    if not binary.is_file():
        pytest.exit(f"switchyard binary not found at {binary}: run `cargo build` first "
                    "or set SWITCHYARD_BIN", returncode=2)
    work = tmp_path_factory.mktemp("switchyard")
    config_path = work / "switchyard.toml"
    config_path.write_text(config(fakes, work / "data"))
    stderr_path = work / "stderr.log"
    env = dict(os.environ, SWITCHYARD_ADMIN_KEY=ADMIN_KEY, RUST_LOG="info,actix_server=warn")
    env.pop("SWITCHYARD_CONFIG", None)
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [str(binary), "--config", str(config_path), "--data-dir", str(work / "data"),
             "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
            text=True,
        )
    lines = queue.Queue()

    def drain():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    url = None
    try:
        while url is None:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                break
            if line is None:
                break
            m = LISTENING.search(line)
            if m:
                url = m.group(1).rstrip("/")
        if url is None:
            raise RuntimeError(
                f"switchyard did not print 'listening on' (exit code {proc.poll()}); "
                f"stderr:\n{stderr_path.read_text()[-4000:]}"
            )
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def admin_key():
    return ADMIN_KEY


@pytest.fixture(scope="session")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key=ADMIN_KEY, max_retries=0,
                         timeout=30)
