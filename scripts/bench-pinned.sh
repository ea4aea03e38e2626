#!/usr/bin/env bash
# Scrape latency when the agent has one CPU (docs/performance.md, "One CPU for the
# agent"): bindwatch pinned to CPU 0 and wrk to CPU 1, in the 1M population and in
# 1k-500l (1k sockets on the same 500 listening ports, so the same /metrics body):
# with a poll every second, with polls stopped after the first one, and
# node_exporter pinned the same way as a control, inside the population's namespace
# and in an empty one; then, with no socket at all, 47 processes holding 0, 1,950 or
# 19,500 eventfds each. Every wrk line also names the busiest process outside the
# benchmark meanwhile. The 1M population runs twice: held (each connection's fds in
# a process's fd table) and parked (`1m-p`: the same sockets, their fds in flight on
# a unix socket, so no fd table holds them). Root, 2 CPUs or more; about 15 minutes.
# Stops only the processes it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-hold.sh
BW_PORT=19998
NE_PORT=19997
SERVER=
cleanup() {
    [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null || true
    hold_stop
}
trap cleanup EXIT

# The p99 of three wrk runs; one wrk thread, as wrk has one CPU (a second thread only
# adds contention on it). Args: the command prefix that enters the namespace, URL, wrk flags.
p99s() {
    local run=$1 url=$2
    shift 2
    local r=() t0=$SECONDS
    cpu_snapshot >"$out/cpu.before"
    for _ in 1 2 3; do
        r+=("$($run taskset -c 1 wrk -t1 -c10 -d5s --latency "$@" "$url" | awk '$1 == "99%" {print $2}')")
    done
    echo "${r[*]}; busiest other: $(busiest_since "$out/cpu.before" $((SECONDS - t0)))"
}

# Starts a server pinned to CPU 0 in the population's namespace and waits until URL
# answers, then for the first polls. nsenter -n and taskset exec, so $! is the server.
serve() {
    local url=$1
    shift
    nsenter -t "$HP" -n taskset -c 0 "$@" >"$out/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 60); do in_ns curl -sf -o /dev/null "$url" && break; sleep 1; done
    in_ns curl -sf -o /dev/null "$url" || { echo "server did not answer:"; cat "$out/server.log"; exit 1; }
    sleep 12
}
stop_server() {
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
}

# "pid cpu-ticks name" for every process on the machine.
cpu_snapshot() {
    local f line
    for f in /proc/[0-9]*/stat; do
        read -r line <"$f" 2>/dev/null || continue
        # comm may hold spaces: the fields after the last ')' are fixed.
        local comm=${line#*(} rest=${line##*) }
        comm=${comm%)*}
        local a=($rest)
        echo "${line%% *} $((a[11] + a[12])) ${comm// /_}"
    done
}
# The process outside this script's servers and wrk that used most CPU between the
# snapshot in file $1 and now, as "name (pid) N% of a core over S s".
busiest_since() {
    local before=$1 secs=$2
    cpu_snapshot | awk -v s="$secs" -v me=$$ -v srv="${SERVER:-0}" '
        NR == FNR { c[$1] = $2; next }
        ($1 in c) && $1 != me && $1 != srv { d = $2 - c[$1]; if (d > best) { best = d; who = $3 " (" $1 ")" } }
        END { if (who == "") print "none"; else printf "%s %.1f%% of a core over %d s\n", who, best / s, s }' "$before" -
}

# The namespace's TcpRetransSegs; on loopback only spurious retransmissions (tail loss
# probes fired because an ACK came late) add to it. Absolute value: nstat's history
# file is shared between namespaces.
retrans() { in_ns nstat -az TcpRetransSegs | awk '$1 == "TcpRetransSegs" {print $2}'; }

measure() {
    local size=$1 bw=http://127.0.0.1:$BW_PORT/metrics ne=http://127.0.0.1:$NE_PORT/metrics
    hold_start "$size" "$out"
    for interval in 1s 1h; do
        serve "$bw" ./target/release/bindwatch --web.listen-address "127.0.0.1:$BW_PORT" \
            --state.file "" --poll.interval "$interval"
        local r0 r1
        r0=$(retrans)
        echo "$size bindwatch --poll.interval $interval plain p99: $(p99s in_ns "$bw")"
        r1=$(retrans)
        echo "   retransmitted segments (tail loss probes) during those runs: $((r1 - r0))"
        echo "$size bindwatch --poll.interval $interval gzip p99:  $(p99s in_ns "$bw" -H 'Accept-Encoding: gzip')"
        stop_server
    done
    serve "$ne" prometheus-node-exporter --collector.disable-defaults --collector.loadavg \
        "--web.listen-address=127.0.0.1:$NE_PORT"
    echo "$size node_exporter (loadavg only), in the namespace, p99: $(p99s in_ns "$ne")"
    stop_server
    # The same control in a namespace of its own while the population exists: does
    # the population slow the machine's loopback, or only its own namespace?
    cat >"$out/empty-ns.sh" <<EOS
ip link set lo up
taskset -c 0 prometheus-node-exporter --collector.disable-defaults --collector.loadavg --web.listen-address=127.0.0.1:$NE_PORT >"$out/ne-empty.log" 2>&1 &
pid=\$!
for _ in \$(seq 1 30); do curl -sf -o /dev/null "$ne" && break; sleep 0.5; done
for _ in 1 2 3; do taskset -c 1 wrk -t1 -c10 -d5s --latency "$ne" | awk '\$1 == "99%" {printf "%s ", \$2}'; done
kill \$pid
EOS
    echo "$size node_exporter (loadavg only), in an empty namespace, p99: $(unshare -n bash "$out/empty-ns.sh")"
    hold_stop
}

# No sockets at all: 47 processes (as many as hold the 1M table) with N eventfds each,
# and bindwatch pinned as above in an empty namespace. Does the number of open files
# alone slow the loopback tail?
files() {
    local per=$1
    cat >"$out/files.sh" <<EOS
ip link set lo up
taskset -c 0 ./target/release/bindwatch --web.listen-address 127.0.0.1:$BW_PORT --state.file "" \\
    --poll.interval 1h >"$out/server.log" 2>&1 &
bw=\$!
holders=()
for i in \$(seq 1 47); do
    python3 -c "
import os, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
fds = [os.eventfd(0) for _ in range($per)]
print(flush=True)
time.sleep(300)" >"$out/holder.\$i" &
    holders+=(\$!)
done
for i in \$(seq 1 47); do
    for _ in \$(seq 1 100); do [ -s "$out/holder.\$i" ] && break; sleep 0.2; done
done
for _ in 1 2 3; do
    taskset -c 1 wrk -t1 -c10 -d5s --latency http://127.0.0.1:$BW_PORT/metrics | awk '\$1 == "99%" {printf "%s ", \$2}'
done
kill "\${holders[@]}" \$bw
EOS
    local t0=$SECONDS
    cpu_snapshot >"$out/cpu.before"
    local r
    r=$(unshare -n bash "$out/files.sh")
    echo "no sockets, 47 processes with $per eventfds each, bindwatch plain p99: $r; busiest other: $(busiest_since "$out/cpu.before" $((SECONDS - t0)))"
}

command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
command -v prometheus-node-exporter >/dev/null || { echo "needs prometheus-node-exporter"; exit 1; }
measure 1m
measure 1m-p
measure 1k-500l
files 0
files 1950
files 19500
