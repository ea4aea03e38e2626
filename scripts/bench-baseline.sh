#!/usr/bin/env bash
# Poll CPU of this tree against an older revision, in one run on the same sockets
# (docs/performance.md, "Against an older build"):
#
#   scripts/bench-baseline.sh [REV] [-- EXTRA BENCH ARGS]     # REV defaults to ec412dd
#
# Builds REV's release binary in a temporary git worktree with its own target dir,
# target/baseline-REV (only `cargo build --release --bin bindwatch`; the worktree and
# the build's intermediates are removed afterwards, the binary is kept and reused),
# then runs the poll bench (`cargo bench --bench poll`) at 100k and 1M with
# --baseline-bin. Root
# (the bench makes network namespaces). Environment: SIZES (default 100k,1m), RUNS
# (default 5), BUILD_TIMEOUT and BENCH_TIMEOUT in seconds (default 1800 and 3600),
# BASELINE_SOURCE (netlink, the default, or bpf: the source both agents poll with).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

rev=ec412dd
if [[ $# -gt 0 && $1 != -- ]]; then
    rev=$1
    shift
fi
[[ ${1:-} == -- ]] && shift
full=$(git rev-parse --verify "$rev^{commit}") || {
    echo "bench-baseline: $rev is not a commit of this repository" >&2
    exit 2
}
short=$(git rev-parse --short=7 "$full")
sizes=${SIZES:-100k,1m}
runs=${RUNS:-5}
dir="$root/target/baseline-$short"
bin="$dir/bindwatch"

wt=""
cleanup() {
    if [[ -n $wt ]]; then
        git -C "$root" worktree remove --force "$wt" 2>/dev/null || rm -rf "$wt"
        git -C "$root" worktree prune
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -x $bin && $(cat "$dir/REV" 2>/dev/null) == "$full" ]]; then
    echo "bench-baseline: reusing $bin ($full)"
else
    wt=$(mktemp -d "${TMPDIR:-/tmp}/bindwatch-baseline-XXXXXX")
    git -C "$root" worktree add --detach --quiet "$wt" "$full"
    echo "bench-baseline: building $full in $wt (target dir $dir)"
    mkdir -p "$dir"
    (cd "$wt" && CARGO_TARGET_DIR="$dir" timeout "${BUILD_TIMEOUT:-1800}" \
        cargo build --release --locked --bin bindwatch)
    cp "$dir/release/bindwatch" "$bin.new"
    mv "$bin.new" "$bin"
    echo "$full" >"$dir/REV"
    # Disk is scarce: keep the binary, not the build.
    rm -rf "$dir/release"
    cleanup
    wt=""
fi

# The bench binary is run directly (not under cargo) so the time limit reaches it;
# its agents die with it (PR_SET_PDEATHSIG), its population children on stdin EOF.
exe=$(cargo bench --bench poll --no-run --message-format=json |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "poll":
        print(m["executable"])')
[[ -x $exe ]] || {
    echo "bench-baseline: could not find the poll bench binary" >&2
    exit 1
}
echo "bench-baseline: $(uname -sr), $(nproc) CPUs, loadavg at start $(cat /proc/loadavg)"
timeout --kill-after=30 "${BENCH_TIMEOUT:-3600}" \
    "$exe" --bench --sizes "$sizes" --runs "$runs" --no-table --no-serve --no-owners \
    --baseline-bin "$bin" "$@"
echo "bench-baseline: loadavg at end $(cat /proc/loadavg)"
