#!/usr/bin/env bash
# Every metric name the Grafana dashboard (deploy/grafana/dashboards/switchyard.json) queries
# must be a series the real binary exposes: starts it with a route that fails over (so the
# failover, error-code and breaker series exist), runs a completion and a refused request,
# scrapes /metrics, and checks each switchyard_* name in the dashboard's queries against the
# scrape. Then, when Prometheus is installed (.ci/run installs it), deploy/prometheus/
# prometheus.yml is validated and run with its target pointed at this server: the scrape must
# succeed and each of the dashboard's queries must evaluate to data. Run by .ci/run; needs
# curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SWITCHYARD_BIN:-target/debug/switchyard}
dashboard=deploy/grafana/dashboards/switchyard.json
work=$(mktemp -d)
pid=
prom_pid=
trap 'for p in $pid $prom_pid; do kill "$p" 2>/dev/null; done; rm -rf "$work"' EXIT

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
# Created before the server starts: the background job opens it only once it runs, and the
# loop below may read it first.
: >"$work/out"
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
# ... and an error answer for the errors panel.
curl -s "$addr/v1/chat/completions" -H 'authorization: Bearer wrong' -d '{}' -o /dev/null
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

command -v prometheus >/dev/null && command -v promtool >/dev/null || exit 0
promtool check config deploy/prometheus/prometheus.yml >/dev/null
# compose.yaml's scrape job as written, but for the target: this server instead of switchyard:8080.
sed "s|\"switchyard:8080\"|\"${addr#http://}\"|" deploy/prometheus/prometheus.yml >"$work/prometheus.yml"
grep -q "${addr#http://}" "$work/prometheus.yml" || { echo "no switchyard:8080 target in prometheus.yml"; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &
prom_pid=$!
prom=http://127.0.0.1:$port
query() { curl -sf "$prom/api/v1/query" --data-urlencode "query=$1"; }
up=
for _ in $(seq 150); do
  up=$(query 'up{job="switchyard"}' 2>/dev/null | jq -r '.data.result[0].value[1] // empty') || true
  [ "$up" = 1 ] && break
  sleep 0.2
done
[ "$up" = 1 ] || { tail -5 "$work/prometheus.log"; echo "Prometheus did not scrape the server with deploy/prometheus/prometheus.yml"; exit 1; }
# Every panel query, with Grafana's $__rate_interval as a plain range, must parse and return
# series from the scrape (rates need two samples: wait for the second scrape).
sleep 6
n=0
while IFS= read -r expr; do
  q=${expr//\$__rate_interval/1m}
  result=$(query "$q") || { echo "Prometheus rejected the dashboard query: $q"; exit 1; }
  [ "$(jq '.data.result | length' <<<"$result")" -gt 0 ] || { echo "no data for the dashboard query: $q"; exit 1; }
  n=$((n + 1))
done < <(jq -r '.. | objects | .expr? // empty' "$dashboard")
echo "prometheus: deploy/prometheus/prometheus.yml scrapes the server; all $n dashboard queries return data"
