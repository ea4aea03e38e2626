#!/usr/bin/env bash
# The CPU budget at a million sockets (docs/performance.md, "The CPU budget over
# two minutes"): bindwatch with default flags in the 1M population of
# `cargo bench --bench poll -- --hold 1m`; its process CPU over 120 s, and how long
# a listener opened 60 s in takes to show in /metrics. Root; about 3 minutes.
# Stops only the processes it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-hold.sh
PORT=19999
NEW_LISTENER=23456
cleanup() {
    [[ -n "${PY:-}" ]] && kill "$PY" 2>/dev/null || true
    [[ -n "${BW:-}" ]] && kill "$BW" 2>/dev/null || true
    hold_stop
}
trap cleanup EXIT

hold_start 1m "$out"

# nsenter execs the command (no fork for -n), so $! is bindwatch itself.
nsenter -t "$HP" -n ./target/release/bindwatch --web.listen-address "127.0.0.1:$PORT" \
    --state.file "" >"$out/bindwatch.log" 2>&1 &
BW=$!
for _ in $(seq 1 60); do in_ns curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 1; done
sleep 6
tick=$(getconf CLK_TCK)
cpu() { awk -v t="$tick" '{print ($14+$15)/t}' "/proc/$BW/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
in_ns curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^bindwatch_sockets\{.*state="(established|time_wait)"' || true
sleep 60
nsenter -t "$HP" -n python3 -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',$NEW_LISTENER)); s.listen(); time.sleep(30)" &
PY=$!
t_l=$(date +%s.%N)
for _ in $(seq 1 100); do
    # Not `curl | grep -q`: with pipefail, grep's early exit fails the pipeline.
    body=$(in_ns curl -s "http://127.0.0.1:$PORT/metrics")
    if grep -q "bindwatch_listener_info{.*port=\"$NEW_LISTENER\"" <<<"$body"; then
        echo "new listener visible after $(echo "$(date +%s.%N) - $t_l" | bc) s"
        break
    fi
    sleep 0.2
done
in_ns ss -ltnH "sport = :$NEW_LISTENER" | grep -q . || echo "the new listener did not come up"
sleep "$(echo "120 - ($(date +%s.%N) - $t0)" | bc)"
c1=$(cpu); t1=$(date +%s.%N)
echo "CPU over the window: $(echo "$c1 - $c0" | bc) s in $(echo "$t1 - $t0" | bc) s = $(echo "scale=5; ($c1 - $c0)/($t1 - $t0)" | bc) of a core (budget 0.01)"
in_ns curl -s "http://127.0.0.1:$PORT/metrics" | grep -E "^bindwatch_(view_timestamp|poll_cpu|last_poll)" || true
echo "now: $(date +%s)"
