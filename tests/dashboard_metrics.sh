#!/usr/bin/env bash
# Every metric name the Grafana dashboard (deploy/grafana/dashboards/switchyard.json) queries
# must be a series the real binary exposes: starts it with a route that fails over (so the
# failover, error-code and breaker series exist), runs a completion, scrapes /metrics, and
# checks each switchyard_* name found in the dashboard's queries against the scrape. Then
# promtool validates deploy/prometheus/prometheus.yml. Run by .ci/run; needs curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SWITCHYARD_BIN:-target/debug/switchyard}
dashboard=deploy/grafana/dashboards/switchyard.json
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

cat >"$work/config.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$work/data"

[[providers]]
name = "down"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
max_attempts = 1

[[providers]]
name = "mock"
kind = "mock"
mock_chunks = 4
mock_chunk_interval_ms = 5

[[models]]
slug = "chat-default"
routes = [{ provider = "down", model = "gpt-x" }, { provider = "mock", model = "mock-1" }]
TOML
SWITCHYARD_ADMIN_KEY=ci-admin RUST_LOG=error "$bin" --config "$work/config.toml" >"$work/out" 2>&1 &
pid=$!
addr=
for _ in $(seq 100); do
  addr=$(sed -n 's/^switchyard listening on //p' "$work/out")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/out"; echo "server did not start"; exit 1; }
curl -sf "$addr/v1/chat/completions" -H 'authorization: Bearer ci-admin' -H 'content-type: application/json' \
  -d '{"model":"chat-default","messages":[{"role":"user","content":"hi"}]}' >/dev/null
curl -sf "$addr/metrics" >"$work/metrics.txt"
grep -q '^switchyard_failovers_total{' "$work/metrics.txt" || { echo "the workload made no failover"; exit 1; }

# Sample names of the scrape (histograms appear as their _bucket, _sum and _count series).
sed -n 's/^\(switchyard_[a-zA-Z0-9_:]*\).*/\1/p' "$work/metrics.txt" | sort -u >"$work/exposed"
jq -r '.. | objects | .expr? // empty' "$dashboard" | grep -o 'switchyard_[a-zA-Z0-9_:]*' | sort -u >"$work/queried"
[ -s "$work/queried" ] || { echo "no switchyard_ metric in $dashboard"; exit 1; }
missing=$(comm -23 "$work/queried" "$work/exposed")
if [ -n "$missing" ]; then
  echo "$dashboard queries metrics the server does not expose:"
  echo "$missing"
  exit 1
fi
echo "dashboard: all $(wc -l <"$work/queried") metric names it queries are exposed"

if command -v promtool >/dev/null; then
  promtool check config deploy/prometheus/prometheus.yml >/dev/null
  echo "promtool: deploy/prometheus/prometheus.yml is valid"
fi
