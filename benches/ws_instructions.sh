#!/bin/bash
# User-space instructions per WebSocket delivery, counted by callgrind (see
# benches/instructions.sh for why counts, not timings).
#
#   benches/ws_instructions.sh [BIN] [SUBSCRIBERS]
#
# Runs `ws_fanout` twice against BIN (default: target/release/switchyard) started under
# `valgrind --tool=callgrind` with counting off, switches counting on once every subscriber
# (default 200) has joined, streams 30 and then 130 chunks at 10 chunks/s, and prints the
# difference per delivery: joins, start-up and the execution's first and last events cancel
# out. Needs valgrind and the bench built: `cargo bench --bench ws_fanout --no-run`
# (`INSTRUCTIONS_PROFILE=debug`: a `cargo build --benches` instead, as CI's smoke test runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
PROFILE=${INSTRUCTIONS_PROFILE:-release}
BIN=$(realpath "${1:-$TARGET/$PROFILE/switchyard}")
SUBSCRIBERS=${2:-200}
BENCH=$(ls -t "$TARGET/$PROFILE"/deps/ws_fanout-* | grep -v '\.d$' | head -1)
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cat > "$DIR/server.sh" <<WRAP
#!/bin/bash
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="\$CALLGRIND_OUT" "$BIN" "\$@"
WRAP
chmod +x "$DIR/server.sh"

# Instructions of one run of `chunks` chunks, counted from the last join on.
count() {
  local chunks=$1 log="$DIR/run-$1.log"
  CALLGRIND_OUT="$DIR/callgrind-$chunks.out" SWITCHYARD_BIN="$DIR/server.sh" \
    "$BENCH" --bench --subscribers "$SUBSCRIBERS" --rate 10 --chunks "$chunks" > "$log" 2>&1 &
  local run=$!
  until grep -q "joined in" "$log" 2>/dev/null; do
    kill -0 $run 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
  done
  callgrind_control -i on "$(sed -n 's/.*server pid \([0-9]*\),.*/\1/p' "$log")" > /dev/null 2>&1
  wait $run
  grep -q "100.0 %" "$log" || { cat "$log" >&2; echo "a run was not 100 % complete" >&2; exit 1; }
  grep -h '^totals:' "$DIR"/callgrind-"$chunks".out* | awk '{s += $2} END {print s}'
}
SHORT=$(count 30)
LONG=$(count 130)
DELIVERIES=$((100 * SUBSCRIBERS))
echo "$SUBSCRIBERS subscribers: 30 chunks $SHORT, 130 chunks $LONG instructions: $(((LONG - SHORT) / DELIVERIES)) per delivery"
