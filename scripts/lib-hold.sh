# Sourced by the bench scripts: holds a population of `cargo bench --bench poll`
# (in its own network namespace) while the script measures inside it. Root.
#   hold_start SIZE DIR   build, start the holder, set HP (a pid in the namespace)
#   in_ns CMD...          run CMD in that namespace
#   hold_stop             tear the population down (the holder ends on a line on stdin)
#   $out                  a scratch directory for the script's logs

out=$(mktemp -d)

hold_start() {
    local size=$1 dir=$2
    cargo build --release --quiet
    cargo bench --bench poll --no-run --quiet 2>/dev/null
    mkfifo "$dir/hold-$size.fifo"
    cargo bench --quiet --bench poll -- --hold "$size" <"$dir/hold-$size.fifo" >"$dir/hold-$size.out" 2>&1 &
    exec {HOLD_FD}>"$dir/hold-$size.fifo"
    for _ in $(seq 1 180); do grep -q "nsenter -t" "$dir/hold-$size.out" 2>/dev/null && break; sleep 1; done
    HP=$(grep -o "nsenter -t [0-9]*" "$dir/hold-$size.out" | awk '{print $3}')
    if [[ -z "$HP" ]]; then
        echo "population $size did not come up:"
        cat "$dir/hold-$size.out"
        return 1
    fi
    echo "population $size held by pid $HP"
}

in_ns() { nsenter -t "$HP" -n "$@"; }

hold_stop() {
    if [[ -n "${HOLD_FD:-}" ]]; then
        echo >&"$HOLD_FD" || true
        exec {HOLD_FD}>&-
        HOLD_FD=
        # The holder tears its children down before it exits.
        wait 2>/dev/null || true
    fi
}
