#!/usr/bin/env bash
# Runs rewind (durable, relaxed) and every peer ALTERNATELY, in one run, for each case of
# issue 14's table, and prints one table of figures and of ratios rewind/peer. Each round
# starts with the disk alone (`rewind bench store --only sync`: a 200-byte write +
# fdatasync every 5 ms, no server running), the floor under rewind's durable latency.
#
#   tests/peers/compare.sh            # 2 rounds, 5 s per measurement, 10,000 idle
#   tests/peers/compare.sh --quick    # 1 round, 2 s per measurement, 1,000 idle
#   tests/peers/compare.sh --rounds 3 --seconds 5 --idle 10000 --out DIR
#   tests/peers/compare.sh --rounds 6 --cases paced_100x200,paced_100x10000
#
# Cases (--cases, comma-separated, each once; default all): paced_100x200 paced_100x10000
# paced_1000x20 flood_1000 flood_100 idle. With more than one round, the table is followed
# by the number of rounds in which each target was met.
#
# Measured on the project's loaded 2-core machine: --quick 3 min 16 s; the default 22 min,
# its first round 15 min with the Socket.IO idle connections opened one at a time, its
# second 8 min with them opened fifty at a time (as now); on a quiet machine 9 min 22 s. Much of the rest is floods
# draining: the bare broadcast leaves megabytes queued per subscriber, and every delivery
# owed is waited for.
#
# Needs cargo, node/npm (>= 18) and python3. Builds what is missing, in release:
# target/release/rewind (the workspace), tests/peers/target/release/peer-* (the peers' own
# Cargo.lock files), tests/peers/socketio/node_modules (`npm ci`). Every server is started
# fresh for each measurement on 127.0.0.1 and stopped after it; the script stops whatever
# it started on exit, Ctrl-C included. Per-measurement JSON lines go to OUT/results.jsonl
# (default a temporary directory, kept and named at the end); the table reports the median
# over rounds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS="$ROOT/tests/peers"
ROUNDS=2
SECONDS_EACH=5
IDLE=10000
OUT=""
ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds|--seconds|--idle|--out)
      [ -n "${2:-}" ] || { echo "$1 needs a value" >&2; exit 2; } ;;&
    --quick) ROUNDS=1; SECONDS_EACH=2; IDLE=1000 ;;
    --rounds) ROUNDS=$2; shift ;;
    --seconds) SECONDS_EACH=$2; shift ;;
    --idle) IDLE=$2; shift ;;
    --cases)
      [ -n "${2:-}" ] || { echo "--cases needs a comma-separated list of cases" >&2; exit 2; }
      IFS=, read -r -a ONLY <<< "$2"; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
CASES=(paced_100x200 paced_100x10000 paced_1000x20 flood_1000 flood_100 idle)
if [ ${#ONLY[@]} -gt 0 ]; then
  PICKED=()
  for c in "${ONLY[@]}"; do
    known=0
    for k in "${CASES[@]}"; do [ "$k" = "$c" ] && known=1; done
    [ $known -eq 1 ] || { echo "unknown case '$c' (cases: ${CASES[*]})" >&2; exit 2; }
    # Each case once, in the order given.
    seen=0
    for k in "${PICKED[@]:-}"; do [ "$k" = "$c" ] && seen=1; done
    [ $seen -eq 1 ] || PICKED+=("$c")
  done
  CASES=("${PICKED[@]}")
fi
OUT=${OUT:-$(mktemp -d /tmp/rewind-compare.XXXXXX)}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

# --- what this script started, stopped on any exit -------------------------------------
STARTED=()
cleanup() {
  for pid in "${STARTED[@]:-}"; do
    [ -n "$pid" ] || continue
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do kill "$child" 2>/dev/null || true; done
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  STARTED=()
}
# forget PID: drops PID (exactly) from STARTED once it has been waited for.
forget() {
  local keep=() p
  for p in "${STARTED[@]:-}"; do [ "$p" != "$1" ] && [ -n "$p" ] && keep+=("$p"); done
  STARTED=("${keep[@]:-}")
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# --- builds ----------------------------------------------------------------------------
REWIND=${REWIND:-$ROOT/target/release/rewind}
if [ ! -x "$REWIND" ]; then
  echo "building rewind (release)..." >&2
  (cd "$ROOT" && cargo build --release -p rewind-broker) >&2
fi
export CARGO_TARGET_DIR="$PEERS/target"
for p in bare socketioxide; do
  bin="$CARGO_TARGET_DIR/release/peer-$( [ $p = bare ] && echo bare-broadcast || echo socketioxide )"
  if [ ! -x "$bin" ]; then
    echo "building the $p peer (release)..." >&2
    cargo build --release --locked --manifest-path "$PEERS/$p/Cargo.toml" >&2
  fi
done
BARE="$CARGO_TARGET_DIR/release/peer-bare-broadcast"
SIOXIDE="$CARGO_TARGET_DIR/release/peer-socketioxide"
if [ ! -d "$PEERS/socketio/node_modules" ]; then
  echo "installing the socket.io peer (npm ci)..." >&2
  (cd "$PEERS/socketio" && npm ci --no-audit --no-fund) >&2
fi

# --- one measurement -------------------------------------------------------------------
PEER_PID=""
PEER_URL=""
# start_peer NAME: starts the peer, waits for its "listening on URL" line.
start_peer() {
  local log="$OUT/peer-$1.out"
  : > "$log"
  case "$1" in
    bare) "$BARE" 127.0.0.1:0 > "$log" 2>>"$OUT/peers.err" & ;;
    socketioxide) "$SIOXIDE" 127.0.0.1:0 > "$log" 2>>"$OUT/peers.err" & ;;
    socketio) node "$PEERS/socketio/server.js" 0 > "$log" 2>>"$OUT/peers.err" & ;;
  esac
  PEER_PID=$!
  STARTED+=("$PEER_PID")
  for _ in $(seq 100); do
    PEER_URL=$(sed -n 's/^listening on //p' "$log")
    [ -n "$PEER_URL" ] && return 0
    sleep 0.1
  done
  echo "peer $1 did not start" >&2
  return 1
}

stop_peer() {
  kill "$PEER_PID" 2>/dev/null || true
  wait "$PEER_PID" 2>/dev/null || true
  forget "$PEER_PID"
  PEER_PID=""
}

# measure SERVER CASE: runs one measurement, appends {"server","case",...} to RESULTS.
measure() {
  local server=$1 case=$2 subs kind rate="" cmd=()
  case "$case" in
    paced_100x200) subs=100; kind=paced; rate=200 ;;
    paced_100x10000) subs=100; kind=paced; rate=10000 ;;
    paced_1000x20) subs=1000; kind=paced; rate=20 ;;
    flood_1000) subs=1000; kind=flood ;;
    flood_100) subs=100; kind=flood ;;
    idle) kind=idle ;;
    sync) kind=sync ;;
  esac
  case "$server" in
    disk)
      # The disk alone, no server: what one durable sync costs it in this run.
      cmd=("$REWIND" bench store --only sync --seconds "$SECONDS_EACH" --probe-interval-ms 5 --json) ;;
    rewind_durable|rewind_relaxed)
      if [ $kind = idle ]; then
        cmd=("$REWIND" bench idle --connections "$IDLE" --json)
      else
        cmd=("$REWIND" bench fanout --subscribers "$subs" --case "$kind" --seconds "$SECONDS_EACH" --json
             --durability "${server#rewind_}" ${rate:+--rate "$rate"})
      fi ;;
    bare)
      start_peer bare
      if [ $kind = idle ]; then
        cmd=("$REWIND" bench idle --connections "$IDLE" --json --target "$PEER_URL" --target-pid "$PEER_PID")
      else
        cmd=("$REWIND" bench fanout --subscribers "$subs" --case "$kind" --seconds "$SECONDS_EACH" --json
             --target "$PEER_URL" --target-pid "$PEER_PID" ${rate:+--rate "$rate"})
      fi ;;
    socketioxide|socketio)
      start_peer "$server"
      cmd=(node "$PEERS/socketio/loadgen.js" --url "$PEER_URL" --case "$kind" --seconds "$SECONDS_EACH"
           --server-pid "$PEER_PID" --label "$server" --connections "$IDLE"
           ${subs:+--subscribers "$subs"} ${rate:+--rate "$rate"}) ;;
  esac
  printf '%-15s %-16s ' "$server" "$case" >&2
  local line rc=0
  "${cmd[@]}" > "$OUT/last.json" 2>>"$OUT/loadgen.err" &
  local pid=$!
  STARTED+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  [ -n "$PEER_PID" ] && stop_peer
  if [ $rc -ne 0 ]; then
    echo "FAILED (exit $rc, see $OUT/loadgen.err)" >&2
    printf '{"server":"%s","case":"%s","round":%d,"failed":true}\n' "$server" "$case" "$round" >> "$RESULTS"
    return 0
  fi
  line=$(tail -n 1 "$OUT/last.json")
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["server"]=sys.argv[2]; d["case"]=sys.argv[3]; d["round"]=int(sys.argv[4]); print(json.dumps(d))' \
    "$line" "$server" "$case" "$round" >> "$RESULTS"
  tail -n 1 "$RESULTS" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("%.0f/s p50 %s us p99 %s us cpu/M %s lost %s%s" % (d["events_per_sec"], d["p50_us"], d["p99_us"], d.get("server_cpu_s_per_million"), d.get("lost"), " WARNING: "+d["warning"] if d.get("warning") else ""))' >&2
}

SERVERS=(rewind_durable bare socketioxide rewind_relaxed socketio)
START=$(date +%s)
echo "results: $RESULTS" >&2
for round in $(seq "$ROUNDS"); do
  echo "== round $round of $ROUNDS" >&2
  measure disk sync
  for case in "${CASES[@]}"; do
    # Alternate: the order of the servers turns by one each round.
    for i in $(seq 0 $((${#SERVERS[@]} - 1))); do
      measure "${SERVERS[$(( (i + round - 1) % ${#SERVERS[@]} ))]}" "$case"
    done
  done
done
echo "took $(( $(date +%s) - START )) s" >&2
python3 "$PEERS/table.py" "$RESULTS"
echo "(per-measurement JSON: $RESULTS)"
