#!/usr/bin/env bash
# Builds the Debian package target/debian/bindwatch_<version>_<arch>.deb with dpkg-deb (no
# cargo-deb: it would have to be compiled first, for nothing dpkg-deb cannot do).
#
#   bash scripts/build-deb.sh                  # cargo build --release, then package
#   bash scripts/build-deb.sh --binary PATH    # package an already built bindwatch
#   bash scripts/build-deb.sh --out DIR        # write into DIR instead of target/debian
#
# Installs what it needs itself when missing (root: apt-get install dpkg-dev binutils).
# The package holds:
#   /usr/bin/bindwatch                                    the binary, stripped
#   /lib/systemd/system/bindwatch.service                 the hardened unit
#   /lib/systemd/system/bindwatch.socket                  socket activation, with
#   /lib/systemd/system/bindwatch-socket.service          the service it starts
#   /etc/default/bindwatch, /etc/bindwatch/bindwatch.yml  conffiles (flags, watched services)
#   /usr/share/man/man1/bindwatch*.1.gz                   from the clap definitions
#   bash, zsh and fish completions                        from the clap definitions
#   /usr/share/doc/bindwatch/                             README, docs/, copyright, changelog,
#     examples/60-bindwatch.conf                          the sysctl drop-in, NOT active (why:
#                                                         docs/deploy.md, "Debian package")
#     examples/ (alert rules, dashboard)
# The units' ExecStart= become /usr/bin/bindwatch (deploy/systemd/ says /usr/local/bin, for a
# binary installed by hand). The maintainer scripts enable and start nothing (docs/deploy.md).
#
# Lintian (`lintian --display-info target/debian/bindwatch_*.deb`) reports no error and no
# warning. The info tags it prints, kept on purpose (tests/package.rs fails on any other):
#   hardening-no-fortify-functions: a Rust binary; _FORTIFY_SOURCE guards C string and
#     memory calls, and there are none to guard (ring's few C files call no such function).
#   package-supports-alternative-init-but-no-init.d-script: bindwatch ships systemd units
#     only; it runs without systemd too, started by any supervisor (docs/deploy.md).
#   systemd-service-file-missing-install-key (bindwatch-socket.service): on purpose, it is
#     started by bindwatch.socket and must not be enabled on its own.
#   spelling-error-in-binary usera users: no such word in bindwatch; Rust string literals
#     carry no NUL, so "...no such user" (web::auth) and "a listening socket..." (the
#     engine's rule text) lying side by side in .rodata read as one string.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-copyright.sh

binary=""
out=target/debian
while [ $# -gt 0 ]; do
    case "$1" in
    --binary)
        binary="${2:?--binary needs a PATH}"
        shift 2
        ;;
    --out)
        out="${2:?--out needs a DIR}"
        shift 2
        ;;
    *)
        echo "build-deb: unknown argument $1 (usage: build-deb.sh [--binary PATH] [--out DIR])" >&2
        exit 2
        ;;
    esac
done

need=()
for tool in dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev strip:binutils gzip:gzip; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "build-deb: missing ${need[*]}; run as root or apt-get install them" >&2
        exit 1
    fi
    echo "build-deb: apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if [ -z "$binary" ]; then
    cargo build --release --locked
    binary=target/release/bindwatch
fi
[ -x "$binary" ] || {
    echo "build-deb: $binary is not an executable" >&2
    exit 1
}

version=$(awk -F'"' '/^\[package\]/{p=1; next} /^\[/{p=0} p && /^version *=/{print $2; exit}' Cargo.toml)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || {
    echo "build-deb: no version in Cargo.toml [package]" >&2
    exit 1
}
# One date for the changelog, the same for every build of one commit (reproducible).
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
maintainer="${DEB_MAINTAINER:-bindwatch developers <bindwatch@example.org>}"

out=$(realpath -m "$out")
root="$out/bindwatch_${version}_${arch}"
rm -rf "$root"
mkdir -p "$root/DEBIAN"
umask 022

# --- files --------------------------------------------------------------------------------
install -D -m 0755 "$binary" "$root/usr/bin/bindwatch"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/bindwatch"

for unit in bindwatch.service bindwatch-socket.service bindwatch.socket; do
    install -D -m 0644 "deploy/systemd/$unit" "$root/lib/systemd/system/$unit"
    sed -i 's#/usr/local/bin/bindwatch#/usr/bin/bindwatch#g' "$root/lib/systemd/system/$unit"
done
install -D -m 0644 deploy/systemd/bindwatch.default "$root/etc/default/bindwatch"
install -D -m 0644 deploy/systemd/bindwatch.yml "$root/etc/bindwatch/bindwatch.yml"

doc="$root/usr/share/doc/bindwatch"
install -D -m 0644 README.md "$doc/README.md"
for f in docs/*.md; do
    install -D -m 0644 "$f" "$doc/docs/$(basename "$f")"
done
install -D -m 0644 deploy/systemd/60-bindwatch.conf "$doc/examples/60-bindwatch.conf"
install -D -m 0644 deploy/prometheus/bindwatch-rules.yml "$doc/examples/bindwatch-rules.yml"
install -D -m 0644 dashboards/bindwatch.json "$doc/examples/bindwatch-dashboard.json"
# Documentation larger than 4 kB is compressed, as dh_compress does (README and docs stay
# readable with zless).
find "$doc" -type f \( -name '*.md' -o -name '*.json' \) -size +4k -exec gzip -9n {} +

# Man pages and completions come from the binary's own clap definitions.
man="$root/usr/share/man/man1"
mkdir -p "$man"
"$root/usr/bin/bindwatch" generate man "$man"
gzip -9n "$man"/*.1
chmod 0644 "$man"/*.gz
comp="$root/usr/share"
mkdir -p "$comp/bash-completion/completions" "$comp/zsh/vendor-completions" \
    "$comp/fish/vendor_completions.d"
"$root/usr/bin/bindwatch" generate completions bash >"$comp/bash-completion/completions/bindwatch"
"$root/usr/bin/bindwatch" generate completions zsh >"$comp/zsh/vendor-completions/_bindwatch"
"$root/usr/bin/bindwatch" generate completions fish >"$comp/fish/vendor_completions.d/bindwatch.fish"

# changelog (a native package: changelog.gz, one entry per version built)
date_rfc=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
{
    echo "bindwatch ($version) unstable; urgency=medium"
    echo
    echo "  * Package built from the bindwatch source tree (scripts/build-deb.sh)."
    echo
    echo " -- $maintainer  $date_rfc"
} | gzip -9n >"$doc/changelog.gz"

# copyright (machine-readable), with every statically linked crate and its license.
write_copyright "$doc/copyright"
chmod 0644 "$doc/copyright"

# --- control ------------------------------------------------------------------------------
# Library dependencies as dpkg-shlibdeps derives them from the binary (libc6, libgcc-s1).
shl=$(mktemp -d)
trap 'rm -rf "$shl"' EXIT
mkdir -p "$shl/debian"
printf 'Source: bindwatch\n\nPackage: bindwatch\nArchitecture: any\n' >"$shl/debian/control"
depends=$(cd "$shl" && dpkg-shlibdeps -O -e "$root/usr/bin/bindwatch" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || {
    echo "build-deb: dpkg-shlibdeps found no library dependencies" >&2
    exit 1
}

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: bindwatch
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Section: net
Priority: optional
Homepage: https://github.com/bindwatch/bindwatch
Description: Prometheus exporter predicting EADDRINUSE on daemon restarts
 bindwatch reads the socket table (netlink sock_diag, /proc/net as fallback),
 finds every listener and every socket that would block its restart, and
 predicts per port whether restarting the daemon now would fail with
 "Address already in use", with and without SO_REUSEADDR, and when that will
 clear. It exports this for Prometheus and ships the commands check, wait and
 ports for the operator on the host.
 .
 The package installs the hardened systemd units but enables and starts
 nothing: see /usr/share/doc/bindwatch/docs/deploy.md.
EOF

cat >"$root/DEBIAN/conffiles" <<EOF
/etc/bindwatch/bindwatch.yml
/etc/default/bindwatch
EOF

# Maintainer scripts: make systemd see the units, restart on upgrade only what was running,
# stop everything on removal. Nothing is enabled or started on a first install.
cat >"$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# bindwatch postinst: tells systemd about the units; enables and starts nothing (a first
# install serves no port until the admin says so: docs/deploy.md, "Debian package").
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    # An upgrade restarts what was running, so it runs the new binary.
    if [ -n "$2" ]; then
        deb-systemd-invoke try-restart bindwatch.service bindwatch-socket.service >/dev/null || true
    fi
fi
exit 0
EOF
cat >"$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# bindwatch prerm: on removal, stop what runs (its binary is about to go).
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop bindwatch.socket bindwatch-socket.service bindwatch.service >/dev/null || true
fi
exit 0
EOF
cat >"$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# bindwatch postrm: forget the units; on purge also the links `systemctl enable` made.
set -e
if [ "$1" = purge ]; then
    rm -f /etc/systemd/system/multi-user.target.wants/bindwatch.service \
        /etc/systemd/system/sockets.target.wants/bindwatch.socket
fi
if { [ "$1" = remove ] || [ "$1" = purge ]; } && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/"{control,conffiles,md5sums}

deb="$out/bindwatch_${version}_${arch}.deb"
rm -f "$deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "build-deb: $deb"
