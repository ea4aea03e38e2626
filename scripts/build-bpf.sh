#!/usr/bin/env bash
# Builds every BPF program under bpf/ (bpf/NAME.bpf.c -> bpf/NAME.bpf.o) with Debian's clang.
#
#   bash scripts/build-bpf.sh            # rebuild the committed objects in place
#   bash scripts/build-bpf.sh OUTDIR     # build into OUTDIR (tests compare with the committed ones)
#
# The objects are committed and embedded into the binary with include_bytes!, so a user's
# `cargo build` needs no clang (the cilium/ebpf bpf2go way). Field offsets are not compiled
# in: the programs use CO-RE (preserve_access_index) and the loader (aya) relocates them from
# the running kernel's BTF. The build is reproducible: relative paths only, DWARF stripped
# (.BTF and .BTF.ext, which CO-RE needs, are kept), so the same clang gives the same bytes.
#
# The committed objects are built with the pinned clang below (Debian 12's). Another clang
# gives other bytes, so the script refuses it unless BPF_ANY_CLANG=1 (for a trial build;
# tests/bpf_objects.rs compares bytes only with the pinned clang).
set -euo pipefail
cd "$(dirname "$0")/.."

PINNED_CLANG="Debian clang version 14.0.6"
out="${1:-bpf}"
mkdir -p "$out"
CLANG="${CLANG:-clang}"
STRIP="${LLVM_STRIP:-llvm-strip}"

have="$("$CLANG" --version | head -n 1)"
if [ "$have" != "$PINNED_CLANG" ] && [ "${BPF_ANY_CLANG:-0}" != 1 ]; then
    echo "build-bpf: $CLANG is \"$have\", the objects are pinned to \"$PINNED_CLANG\"" >&2
    echo "build-bpf: install that clang, or set BPF_ANY_CLANG=1 for a build that is not committed" >&2
    exit 1
fi

for src in bpf/*.bpf.c; do
    [ -e "$src" ] || continue
    name="$(basename "$src" .c)"
    "$CLANG" -O2 -g -target bpf -D__TARGET_ARCH_x86 -Ibpf/include \
        -fno-ident -fdebug-prefix-map="$PWD"=. \
        -c "$src" -o "$out/$name.o"
    "$STRIP" -g "$out/$name.o"
    echo "build-bpf: $src -> $out/$name.o"
done
