#!/usr/bin/env bash
# rustc wrapper for the fuzz builds (named by .cargo/config.toml): compiles vmkit-fuzzing, the
# harness crate, without coverage instrumentation, and everything else as cargo-fuzz asks.
#
# cargo-fuzz hands every crate the same RUSTFLAGS, among them `-Cpasses=sancov-module`, the pass
# that instruments edges, comparisons and stack depth for libFuzzer. The harness (the virtio
# driver simulator, the operation decoders) runs the same way in every run of a target: its edges
# tell libFuzzer nothing about the device, but libFuzzer tallies every one of them after every
# input, and its comparisons each call a hook. Left out, the edges a target counts are those of
# the device and of the target's own fixture. Without that pass the other coverage flags do
# nothing, so dropping it is enough; AddressSanitizer stays on.
#
# Cargo runs `rustc-wrapper.sh RUSTC ARGS...` (RUSTC may itself be a wrapper such as
# clippy-driver, which then gets `rustc ARGS...`).
set -euo pipefail
rustc=$1
shift
crate=
prev=
for arg in "$@"; do
    [ "$prev" = --crate-name ] && crate=$arg
    prev=$arg
done
if [ "$crate" = vmkit_fuzzing ]; then
    args=()
    for arg in "$@"; do
        [ "$arg" = -Cpasses=sancov-module ] || args+=("$arg")
    done
    exec "$rustc" "${args[@]}"
fi
exec "$rustc" "$@"
