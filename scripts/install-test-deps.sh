#!/usr/bin/env bash
# Install everything the deploy/ tests (tests/deploy*.rs) need on a fresh Debian 12 that only
# has Rust. Idempotent: installs only what is missing. Run as root, non-interactively.
#
#   bash scripts/install-test-deps.sh
#
# Afterwards:
#   - promtool, systemd-analyze, ss, curl, ... are on the normal PATH (apt);
#   - kubernetes-validate lives in a venv at $BINDWATCH_VENV (default
#     $HOME/.cache/bindwatch-venv); tests/common/deploy.rs looks in $BINDWATCH_VENV/bin itself, so
#     nothing has to be sourced. The venv's python also has PyYAML (a dependency of
#     kubernetes-validate), which the tests use to compare YAML documents parsed, and
#     prometheus_client, whose OpenMetrics parser tests/web_exposition.rs feeds /metrics to;
#   - chromium (tests/web_landing.rs renders the landing page headless) and
#     systemd-socket-activate (socket activation, tests/web_serve.rs) come from apt.
#   - lintian, man-db, dpkg-dev and binutils: tests/package.rs builds the Debian package
#     with scripts/build-deb.sh and judges it; podman and runc build and run the image of
#     scripts/build-image.sh (tests/container_image.rs).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
VENV="${BINDWATCH_VENV:-$HOME/.cache/bindwatch-venv}"
# Pinned so that the Kubernetes versions it knows stay the ones tests/common/deploy.rs asks for.
K8S_VALIDATE_VERSION="${K8S_VALIDATE_VERSION:-1.34.1}"
# The third-party OpenMetrics parser tests/web_exposition.rs feeds bindwatch's exposition to.
PROM_CLIENT_VERSION="${PROM_CLIENT_VERSION:-0.21.1}"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: must run as root (apt-get install)" >&2
    exit 1
fi

# command -> Debian package that provides it
declare -A PKG_FOR=(
    [promtool]=prometheus
    [prometheus]=prometheus
    [ss]=iproute2
    [nsenter]=util-linux
    [sysctl]=procps
    [pgrep]=procps
    [curl]=curl
    [openssl]=openssl
    [ip]=iproute2
    [setpriv]=util-linux
    [unshare]=util-linux
    [systemd-analyze]=systemd
    # tests/web_serve.rs: socket activation; tests/web_landing.rs: the landing page in a
    # real browser
    [systemd-socket-activate]=systemd
    [chromium]=chromium
    # tests/package.rs: scripts/build-deb.sh, and what judges the package it builds
    [dpkg-deb]=dpkg
    [dpkg-shlibdeps]=dpkg-dev
    [strip]=binutils
    [lintian]=lintian
    [man]=man-db
    # BPF objects (tests/bpf_objects.rs rebuilds them with scripts/build-bpf.sh)
    [clang]=clang
    [llvm-strip]=llvm
    [bpftool]=bpftool
    # tests/container_image.rs: the image (podman builds it; runc runs it where crun cannot)
    [podman]=podman
    [runc]=runc
    # real daemons restarted for real (restart and unix-socket tests)
    [nginx]=nginx
    [redis-server]=redis-server
)

missing=()
for cmd in "${!PKG_FOR[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        missing+=("${PKG_FOR[$cmd]}")
    fi
done
# libbpf-dev has no command: its headers are what the BPF programs include.
if [ ! -e /usr/include/bpf/bpf_helpers.h ]; then
    missing+=(libbpf-dev)
fi
# The venv is built from Debian's own python (not whatever python3 is first on PATH, e.g. a
# pyenv shim that a later machine may lack); `-m venv` needs python3-venv (ensurepip).
PY=/usr/bin/python3
if [ ! -x "$PY" ] || ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    # de-duplicate
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "install-test-deps: apt-get install ${missing[*]}"
    apt-get update -q
    # Daemon packages (nginx, redis-server) must not start their services on the host: the
    # tests start their own, in private network namespaces. policy-rc.d 101 says "do not
    # start"; one placed here is removed again, one that was already there is left alone.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
else
    echo "install-test-deps: apt packages already present"
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "install-test-deps: creating venv $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv --clear "$VENV"
fi
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$K8S_VALIDATE_VERSION"; then
    echo "install-test-deps: pip install kubernetes-validate==$K8S_VALIDATE_VERSION into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "kubernetes-validate==$K8S_VALIDATE_VERSION"
fi
"$VENV/bin/python" -c 'import yaml' # PyYAML comes with kubernetes-validate; fail loudly if not

if ! "$VENV/bin/python" -c "import prometheus_client, sys; sys.exit(prometheus_client.__version__ != '$PROM_CLIENT_VERSION')" 2>/dev/null; then
    echo "install-test-deps: pip install prometheus_client==$PROM_CLIENT_VERSION into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "prometheus_client==$PROM_CLIENT_VERSION"
fi

echo "install-test-deps: kubernetes-validate is $VENV/bin/kubernetes-validate"
echo "install-test-deps: done"
