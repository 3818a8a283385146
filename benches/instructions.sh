#!/bin/bash
# Instructions per request, counted by callgrind: repeatable to about 1 % whatever else the
# machine is doing, where timings on a shared 2-core VM move by 20 % or more between runs.
#
#   benches/instructions.sh [BIN] [MEASURED] [stream]
#
# Starts gateway_overhead's fake upstream (its own process: 20-word answers in 22 SSE writes),
# BIN (default: target/release/switchyard) under `valgrind --tool=callgrind` on a fresh data
# dir, sends 50 warm-up requests and then MEASURED (default 400) non-stream chat completions
# (`stream`: streamed ones) one after another over one keep-alive connection, counting only
# the measured ones, and prints the instructions per request. Needs valgrind, python3 and the
# bench built: `cargo build --release && cargo bench --bench gateway_overhead --no-run`
# (`INSTRUCTIONS_PROFILE=debug` takes the upstream from a `cargo build --benches` instead; CI
# runs it that way, as a smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
PROFILE=${INSTRUCTIONS_PROFILE:-release}
BIN=${1:-$TARGET/$PROFILE/switchyard}
MEASURED=${2:-400}
STREAM=$([ "${3:-}" = stream ] && echo 1 || echo 0)
BENCH=$(ls -t "$TARGET/$PROFILE"/deps/gateway_overhead-* | grep -v '\.d$' | head -1)
DIR=$(mktemp -d)
trap 'kill $UP $GW 2>/dev/null || true; rm -rf "$DIR"' EXIT

OVERHEAD_UPSTREAM=1 "$BENCH" > "$DIR/upstream.out" 2>&1 &
UP=$!
until grep -q "upstream listening" "$DIR/upstream.out" 2>/dev/null; do sleep 0.2; done
UPSTREAM=$(sed -n 's|.*upstream listening on http://||p' "$DIR/upstream.out")
cat > "$DIR/switchyard.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "unused"
[[providers]]
name = "fake"
kind = "openai"
base_url = "http://$UPSTREAM/v1"
[[models]]
slug = "ns"
routes = [{ provider = "fake", model = "ns" }]
[[models]]
slug = "s20"
routes = [{ provider = "fake", model = "s20" }]
TOML

SWITCHYARD_ADMIN_KEY=bench-admin-key valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$DIR/callgrind.out" "$BIN" --config "$DIR/switchyard.toml" \
    --data-dir "$DIR/data" --listen 127.0.0.1:0 > "$DIR/gateway.out" 2>&1 &
GW=$!
until grep -q "switchyard listening" "$DIR/gateway.out" 2>/dev/null; do sleep 0.5; done
ADDR=$(grep -o "switchyard listening on http://[0-9.:]*" "$DIR/gateway.out" | head -1 | sed 's|.*http://||')

python3 - "$ADDR" "$MEASURED" "$STREAM" "$GW" <<'PY'
import http.client, json, subprocess, sys
addr, measured, stream, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
host, port = addr.split(":")
conn = http.client.HTTPConnection(host, int(port))
body = {"model": "s20" if stream else "ns",
        "messages": [{"role": "user", "content": "Say twenty words."}]}
if stream:
    body.update(stream=True, stream_options={"include_usage": True})
body = json.dumps(body)
headers = {"content-type": "application/json", "authorization": "Bearer bench-admin-key"}
def one():
    conn.request("POST", "/v1/chat/completions", body, headers)
    answer = conn.getresponse()
    data = answer.read()
    assert answer.status == 200, (answer.status, data)
    assert (b"data: [DONE]" in data) if stream else (b'"finish_reason":"stop"' in data), data
def callgrind(*args):
    subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True)
for _ in range(50):
    one()
callgrind("-i", "on")
for _ in range(measured):
    one()
callgrind("-i", "off")
callgrind("-d")
PY
TOTAL=$(grep -h '^totals:' "$DIR"/callgrind.out* | awk '{s += $2} END {print s}')
echo "$MEASURED $([ "$STREAM" = 1 ] && echo streamed || echo non-stream) requests: $TOTAL instructions, $((TOTAL / MEASURED)) per request"
