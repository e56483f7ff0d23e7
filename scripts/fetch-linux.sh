#!/usr/bin/env bash
# Fetches the Linux guest that the reference VMM's Linux tests and benches/linux-milestones.sh boot:
# Debian's current kernel (the versioned package `linux-image-amd64` depends on) and
# `busybox-static`, downloaded with `apt-get download` into target/debian/ and unpacked with
# `dpkg-deb -x` into target/debian/root/. Nothing is installed on the host.
#
# Idempotent: when the unpacked kernel and busybox are present it only says so. Delete
# target/debian/ to fetch the archive's current kernel again. Called by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=target/debian
ROOT=$DEST/root

present() {
    compgen -G "$ROOT/boot/vmlinuz-*" >/dev/null && [ -x "$ROOT/bin/busybox" ]
}

if present; then
    kernel=$(basename "$(compgen -G "$ROOT/boot/vmlinuz-*" | sort | tail -1)")
    echo "fetch-linux: present in $ROOT: $kernel, busybox"
    exit 0
fi

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
versioned() { # empty when apt knows no such package yet
    { apt-cache depends linux-image-amd64 2>/dev/null || true; } |
        awk '!found && $1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; found = 1 }'
}
kernel_package=$(versioned)
if [ -z "$kernel_package" ]; then
    # No package lists yet (a fresh container): fetch them once.
    $SUDO apt-get update -qq
    kernel_package=$(versioned)
fi
if [ -z "$kernel_package" ]; then
    echo "fetch-linux: apt-cache finds no versioned dependency of linux-image-amd64" >&2
    exit 1
fi

mkdir -p "$DEST"
# apt-get download drops root to the `_apt` user to fetch; give it a directory it may write.
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
    chown _apt "$download"
fi
(cd "$download" && apt-get download -qq "$kernel_package" busybox-static)
rm -f "$DEST"/*.deb
mv "$download"/*.deb "$DEST"/

rm -rf "$ROOT"
mkdir -p "$ROOT"
for deb in "$DEST"/*.deb; do
    dpkg-deb -x "$deb" "$ROOT"
done
if ! present; then
    echo "fetch-linux: the packages hold no boot/vmlinuz-* or bin/busybox" >&2
    exit 1
fi
echo "fetch-linux: fetched $(cd "$DEST" && echo *.deb) into $ROOT"
