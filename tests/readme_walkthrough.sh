#!/usr/bin/env bash
# Runs the README's walkthrough as written: every ```sh block of its "## Walkthrough" section,
# in order, in one shell, against a fresh server (the block that starts the server with
# `cargo run` is replaced by the built binary, and `localhost:8080` by a free port, so a busy
# 8080 on the CI machine does not matter). Fails on the first failing command and checks what
# the steps print.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${SWITCHYARD_BIN:-${CARGO_TARGET_DIR:-target}/debug/switchyard}"
work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
SWITCHYARD_ADMIN_KEY=sy_admin_demo "$bin" --data-dir "$work/data" --listen "127.0.0.1:$port" \
  >"$work/server.out" 2>"$work/server.err" &
server=$!
for _ in $(seq 1 100); do
  curl -sf "localhost:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "localhost:$port/readyz" >/dev/null

python3 - "$work/walkthrough.sh" "$port" <<'PY'
import re, sys
readme = open("README.md").read()
section = readme.split("\n## Walkthrough\n", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
steps = [b.replace("localhost:8080", "localhost:" + sys.argv[2]) for b in blocks if "cargo run" not in b]
assert len(steps) >= 6, f"the walkthrough has {len(steps)} runnable blocks"
open(sys.argv[1], "w").write("set -euo pipefail\n" + "\n".join(steps))
PY

out="$(bash "$work/walkthrough.sh")"
echo "$out"
check() { grep -q -- "$1" <<<"$out" || { echo "walkthrough: expected \`$1\` in its output" >&2; exit 1; }; }
check '^exec_'
check 'event: done'
check '"status": "completed"'
check '^cancelled$'
check '"status":"cancelled"'
check '^sy_'
check '"validation":{"valid":true,"repairs":0}'
check '"state":"completed","index":1,"step":"reply"'
check '"from":"testing","to":"testing-fallback"'
echo "walkthrough: every command ran as written"
