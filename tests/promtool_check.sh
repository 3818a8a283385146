#!/usr/bin/env bash
# Scrapes /metrics of the real binary after a small workload and validates the exposition
# with Prometheus' own promtool. Run by .ci/run; needs target/debug/switchyard and promtool.
set -euo pipefail
bin=${SWITCHYARD_BIN:-target/debug/switchyard}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
SWITCHYARD_ADMIN_KEY=ci-admin RUST_LOG=warn "$bin" --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/out" &
pid=$!
for _ in $(seq 100); do
  addr=$(sed -n 's/^switchyard listening on //p' "$work/out")
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "server did not start"; exit 1; }
auth=(-H 'authorization: Bearer ci-admin')
id=$(curl -sf "${auth[@]}" "$addr/v1/executions" \
  -d '{"model":"chat-default","idempotency_key":"promtool","messages":[{"role":"user","content":"hi"}]}' |
  sed -n 's/.*"id":"\(exec_[A-Za-z0-9]*\)".*/\1/p')
curl -sfN "${auth[@]}" "$addr/v1/executions/$id/events" >/dev/null
curl -sf "$addr/metrics" >"$work/metrics.txt"
grep -q '^switchyard_executions_total{model="chat-default",status="completed"} 1$' "$work/metrics.txt"
promtool check metrics <"$work/metrics.txt"
echo "promtool: metrics of $(grep -c '^switchyard_' "$work/metrics.txt") series are valid"
