#!/usr/bin/env bash
# Installs what vmkit's build, tests and fuzzing need and are missing on this machine.
# Idempotent: a second run only checks. Sourced by scripts/test.sh and scripts/run.sh.
set -euo pipefail

need_apt=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# mkdisk's tests cross-check its images with independent tools.
command -v sgdisk >/dev/null 2>&1 || need_apt+=(gdisk)
command -v mcopy >/dev/null 2>&1 || need_apt+=(mtools)
# vmkit-boot's ACPI tests disassemble its tables with iasl; the Linux tests unpack the kernel's
# XZ payload with xz.
command -v iasl >/dev/null 2>&1 || need_apt+=(acpica-tools)
command -v xz >/dev/null 2>&1 || need_apt+=(xz-utils)
if [ "${VMKIT_SETUP_MINIMAL:-0}" = "1" ]; then need_apt=(); fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

installed_components=$(rustup component list --installed 2>/dev/null || true)
for c in rustfmt clippy llvm-tools rust-src; do
    if ! grep -q "^$c" <<<"$installed_components"; then
        [ "$c" = llvm-tools ] && c=llvm-tools-preview
        echo "setup: rustup component add $c"
        rustup component add "$c"
    fi
done
if ! rustup target list --installed | grep -qx x86_64-unknown-none; then
    echo "setup: rustup target add x86_64-unknown-none"
    rustup target add x86_64-unknown-none
fi

if [ "${VMKIT_SETUP_MINIMAL:-0}" != "1" ]; then
    if ! rustup toolchain list | grep -q '^nightly'; then
        echo "setup: rustup toolchain install nightly (for cargo-fuzz)"
        rustup toolchain install nightly --profile minimal
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "setup: cargo install cargo-fuzz"
        cargo install cargo-fuzz --locked --quiet
    fi
    if ! cargo llvm-cov --version >/dev/null 2>&1; then
        echo "setup: cargo install cargo-llvm-cov"
        cargo install cargo-llvm-cov --locked --quiet
    fi
    # The Linux guest of the reference VMM's Linux tests (unpacked under target/debian/).
    bash "$(dirname "${BASH_SOURCE[0]}")/fetch-linux.sh"
fi
