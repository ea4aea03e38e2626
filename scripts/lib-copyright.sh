# Sourced by scripts/build-deb.sh and scripts/build-image.sh (from the repository root):
# write_copyright FILE writes the machine-readable copyright file of what they ship. The
# binary links its Rust dependencies in statically: each is listed with the license its
# crate declares, as `cargo tree` reads it (the dependencies of this target, no dev-deps).
# SOURCE_DATE_EPOCH gives the year.
write_copyright() {
    local year crates
    year=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y)
    crates=$(cargo tree --offline -e normal --prefix none --format '{p}|{l}' |
        grep -v '^bindwatch ' | sed 's/ (.*)//' | sort -u |
        awk -F'|' '{ printf " %s: %s\n", $1, ($2 == "" ? "see the crate" : $2) }')
    [ -n "$crates" ] || {
        echo "write_copyright: cargo tree listed no crates" >&2
        return 1
    }
    cat >"$1" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: bindwatch
Source: https://github.com/bindwatch/bindwatch
Comment: /usr/bin/bindwatch contains these Rust crates, statically linked, each
 under the license its crate declares:
$crates

Files: *
Copyright: $year bindwatch developers
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may not use
 this file except in compliance with the License. You may obtain a copy of the
 License at http://www.apache.org/licenses/LICENSE-2.0
 .
 On Debian systems, the complete text of the Apache License, Version 2.0 can be
 found in /usr/share/common-licenses/Apache-2.0.
EOF
}
