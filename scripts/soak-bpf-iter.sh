#!/usr/bin/env bash
# Soak of the bpf source's socket iterator under connection churn (docs/deploy.md,
# "Soak test of the TCP iterator"): does the kernel's `iter/tcp` batching log a refcount
# warning (`refcount_t: addition on 0; use-after-free` in bpf_iter_tcp_established_batch)
# while bindwatch agents walk a churning socket table every poll?
#
# In a network namespace of its own, scripts/soak-churn.py opens and closes short TCP
# connections (IPv4, IPv6 and v4-mapped, over several loopback addresses, closed by FIN
# or RST from either side) for DURATION seconds, while a release `bindwatch serve
# --source bpf --poll.interval 1s --poll.cpu-budget 0` in the same namespace walks the
# table every poll. The kernel log between a start and a stop marker is then searched.
#
# Root. Not part of the test command. Exit 0: the kernel logged nothing of the kind;
# 1: it did (the lines are printed), or the agent died; 2: the run could not tell (setup
# failed, or such a warning was already printed since boot: the kernel prints each
# refcount_t warning once per boot). Environment (defaults):
#   DURATION=600  seconds of churn        RATE=2000  connections per second, at most
#   LIVE=256      open connections, most  PORT=19980 the agent's HTTP port (in the namespace)
#   INTERVAL=1s   --poll.interval         BINDWATCH=target/release/bindwatch (built if unset)
#   AGENTS=1      agents walking the table at once (the others serve on PORT+1, PORT+2, ...)
# Stops only what it started (by pid) and deletes its namespace, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-600}
RATE=${RATE:-2000}
LIVE=${LIVE:-256}
PORT=${PORT:-19980}
AGENTS=${AGENTS:-1}
INTERVAL=${INTERVAL:-1s}
PATTERN='refcount_t|use-after-free|bpf_iter_tcp|WARNING:|BUG:'

for v in DURATION RATE LIVE PORT AGENTS; do
    if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
        echo "soak: $v must be a positive integer, got '${!v}'" >&2
        exit 2
    fi
done
if [[ $EUID -ne 0 ]]; then
    echo "soak: needs root (network namespace, BPF, the kernel log)" >&2
    exit 2
fi
if [[ $(cat /proc/sys/kernel/panic_on_warn 2>/dev/null || echo 0) != 0 ]]; then
    echo "soak: kernel.panic_on_warn is set: a kernel warning would panic this machine" >&2
    exit 2
fi

if [[ -z "${BINDWATCH:-}" ]]; then
    cargo build --release --quiet --bin bindwatch
    BINDWATCH=target/release/bindwatch
fi
PY=$(python3 -c 'import sys; print(sys.executable)')

NS=bwsoak-$$-$RANDOM
out=$(mktemp -d -t bwsoak.XXXXXX)
AGENT=
EXTRA=()
CHURN=
NAP=
NS_MADE=

stop_pid() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    [[ -n "$NAP" ]] && kill "$NAP" 2>/dev/null
    [[ -n "$CHURN" ]] && stop_pid "$CHURN"
    [[ -n "$AGENT" ]] && stop_pid "$AGENT"
    for p in "${EXTRA[@]}"; do stop_pid "$p"; done
    [[ -n "$NS_MADE" ]] && ip netns del "$NS" 2>/dev/null
    echo "soak: logs in $out"
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 130' INT TERM

# nsenter execs its command (no fork for a network namespace alone), so $! of a
# `nsenter ... CMD &` is CMD itself (`ip netns exec` forks: killing it would leave CMD
# running). The background commands below call nsenter directly: a shell function in
# the background is a subshell of its own.
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }
# The metrics of the agent serving on port $1 (the first agent's without it).
metrics() { in_ns curl -s --max-time 5 "http://127.0.0.1:${1:-$PORT}/metrics"; }
# TCP sockets of the namespace in the agent's last table walk.
tcp_sockets() { awk 'index($0, "bindwatch_sockets{") == 1 && /protocol="tcp"/ { s += $NF } END { print s + 0 }'; }
# The sum of a metric's samples whose line starts with $1 (name and labels, as far as given).
metric() { awk -v m="$1" 'index($0, m) == 1 { s += $NF; n++ } END { if (n) printf "%.6g\n", s; else print "none" }'; }

kernel_before=$(dmesg)
# The kernel prints each refcount_t warning once per boot: one already printed cannot
# show again in this run.
spent=$(grep -E 'refcount_t:' <<<"$kernel_before" || true)
if [[ -n "$spent" ]]; then
    echo "soak: the kernel already logged since boot (each is printed once per boot):"
    echo "$spent"
fi

ip netns add "$NS"
NS_MADE=1
ip -n "$NS" link set lo up
v4=() v6=(::1)
for i in $(seq 1 8); do v4+=("127.0.0.$i"); done
for i in $(seq 1 7); do
    ip -n "$NS" addr add "fd00:b1d::$i/128" dev lo nodad
    v6+=("fd00:b1d::$i")
done

echo "soak: kernel $(uname -r), $(nproc) CPUs, namespace $NS, ${DURATION} s at most ${RATE} connections/s," \
    "at most $LIVE open, $AGENTS agent(s) polling every $INTERVAL"
echo "bindwatch-soak $NS: start" >/dev/kmsg

for i in $(seq 0 $((AGENTS - 1))); do
    nsenter --net="/run/netns/$NS" "$BINDWATCH" serve --source bpf --poll.interval "$INTERVAL" \
        --poll.cpu-budget 0 --state.file= --no-bind-events \
        --web.listen-address "127.0.0.1:$((PORT + i))" >"$out/bindwatch-$i.log" 2>&1 &
    if ((i == 0)); then AGENT=$!; else EXTRA+=("$!"); fi
done
all=("$AGENT" "${EXTRA[@]}")
for i in "${!all[@]}"; do
    pid=${all[$i]}
    up=
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        if metrics $((PORT + i)) 2>/dev/null | grep -q '^bindwatch_source_active{source="bpf"} 1'; then
            up=1
            break
        fi
        sleep 1
    done
    if [[ -z "$up" ]]; then
        echo "soak: agent $i did not come up with the bpf source:"
        tail -20 "$out/bindwatch-$i.log"
        exit 2
    fi
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != bindwatch ]]; then
        echo "soak: pid $pid is not an agent (a wrapper forked?): cannot stop it by pid" >&2
        exit 2
    fi
done
polls_before=$( (metrics || true) | metric 'bindwatch_poll_duration_seconds_count{source="bpf"}')

nsenter --net="/run/netns/$NS" "$PY" scripts/soak-churn.py --duration "$DURATION" --rate "$RATE" --live "$LIVE" \
    --v4 "${v4[@]}" --v6 "${v6[@]}" >"$out/churn.out" 2>"$out/churn.err" &
CHURN=$!
t0=$(date +%s)
agent_died=
peak=0
while kill -0 "$CHURN" 2>/dev/null; do
    # In the background, so that a signal's trap runs at once.
    sleep 10 &
    NAP=$!
    wait "$NAP" || true
    NAP=
    for pid in "${all[@]}"; do
        kill -0 "$pid" 2>/dev/null || agent_died=1
    done
    [[ -n "$agent_died" ]] && break
    body=$(metrics || true)
    n=$(tcp_sockets <<<"$body")
    ((n > peak)) && peak=$n
    if (($(date +%s) - t0 >= 60)); then
        t0=$(date +%s)
        echo "soak: $(date -u +%T) polls $(metric 'bindwatch_poll_duration_seconds_count{source="bpf"}' <<<"$body")," \
            "TCP sockets the agent saw $n, agent RSS $(awk '/^VmRSS/ {print $2, $3}' "/proc/$AGENT/status")," \
            "$(tail -1 "$out/churn.err" 2>/dev/null)"
    fi
done
churn_rc=0
if [[ -z "$agent_died" ]]; then
    wait "$CHURN" || churn_rc=$?
else
    stop_pid "$CHURN"
fi
CHURN=
# Let the agent walk the table once more as the last connections close.
sleep 2
body=$(metrics || true)
printf '%s\n' "$body" >"$out/metrics-last.txt"
extra_polls=
for i in "${!EXTRA[@]}"; do
    b=$(metrics $((PORT + i + 1)) || true)
    extra_polls+=" $(metric 'bindwatch_poll_duration_seconds_count{source="bpf"}' <<<"$b")"
    extra_polls+="/$(metric 'bindwatch_poll_errors_total' <<<"$b")"
done
for p in "${EXTRA[@]}"; do stop_pid "$p"; done
EXTRA=()
agent_pid=$AGENT
stop_pid "$AGENT"
AGENT=
echo "bindwatch-soak $NS: stop" >/dev/kmsg

dmesg >"$out/kernel-all.log"
window=$(awk -v s="bindwatch-soak $NS: start" -v e="bindwatch-soak $NS: stop" \
    'index($0, s) { on = 1; next } index($0, e) { on = 0 } on' "$out/kernel-all.log")
printf '%s\n' "$window" >"$out/kernel.log"
found=$(grep -E "$PATTERN" <<<"$window" || true)

polls_after=$(metric 'bindwatch_poll_duration_seconds_count{source="bpf"}' <<<"$body")
poll_sum=$(metric 'bindwatch_poll_duration_seconds_sum{source="bpf"}' <<<"$body")
echo
echo "kernel:       $(uname -r) ($(nproc) CPUs)"
echo "churn:        $(cat "$out/churn.out" 2>/dev/null) (exit $churn_rc)"
echo "agent polls:  $polls_after in all, $polls_before before the churn," \
    "poll errors $(metric 'bindwatch_poll_errors_total' <<<"$body")," \
    "poll time $(awk -v s="$poll_sum" -v n="$polls_after" 'BEGIN { if (n + 0 > 0) printf "%.1f ms", 1000 * s / n; else print "?" }') on average," \
    "agent CPU $(metric 'process_cpu_seconds_total' <<<"$body") s, pid $agent_pid"
if ((AGENTS > 1)); then
    echo "other agents: polls/poll errors:$extra_polls; pids ${all[*]:1}"
fi
echo "agent table:  at most $peak TCP sockets in one walk (sampled every 10 s), $(tcp_sockets <<<"$body") in the last"
echo "kernel log:   $(grep -c . <<<"$window" || true) lines between the markers, $(grep -c . <<<"$found" || true) matching"
if [[ -n "$found" ]]; then
    echo "$found"
    echo "  (the kernel log is the whole machine's; these traces' PID/Comm lines, the agents'" \
        "poller threads being bindwatch-polle:)"
    grep -oE 'PID: [0-9]+ Comm: [^ ]+' <<<"$window" | sort | uniq -c || true
fi
if ! grep -q "bindwatch-soak $NS: start" "$out/kernel-all.log"; then
    echo "verdict:      cannot tell: the start marker left the kernel's ring buffer"
    exit 2
fi
if [[ -n "$agent_died" ]]; then
    echo "verdict:      FAIL: the agent exited during the churn (logs in $out/bindwatch-*.log)"
    tail -n 20 "$out"/bindwatch-*.log
    exit 1
fi
if [[ -n "$found" ]]; then
    echo "verdict:      FAIL: the kernel logged a warning during the soak"
    exit 1
fi
if [[ $churn_rc -ne 0 ]]; then
    echo "verdict:      cannot tell: the churn failed (exit $churn_rc, $out/churn.err)"
    exit 2
fi
if [[ -n "$spent" ]]; then
    echo "verdict:      nothing logged, but a refcount_t warning printed before the run could not show again"
    exit 2
fi
echo "verdict:      PASS: no refcount, use-after-free, bpf_iter_tcp, WARNING or BUG line in the kernel log"
