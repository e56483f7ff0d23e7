#!/usr/bin/env bash
# vmkit's full test suite: formatting, lints, docs (and their README links), the library crates
# packaged and built from their .crate files, the no_std build, every test (under coverage),
# the coverage floors, the fuzz-seed replays and every fuzz target for a fixed time.
#
#   FUZZ_SECONDS=N   seconds per fuzz target (default 20)
#   VMKIT_SKIP_KVM_TESTS=1   explicitly skip tests that need /dev/kvm (they fail loudly otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
LOG_DIR="$ROOT/target/test-logs"
mkdir -p "$LOG_DIR"
: >"$LOG_DIR/tests.log"

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "setup"
bash scripts/setup.sh

step "format"
cargo fmt --all --check
(cd fuzz && cargo fmt --check -p vmkit-fuzz -p vmkit-fuzz-common)
(cd guests && cargo fmt --all --check)

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
(cd fuzz && cargo clippy --workspace --all-targets -- -D warnings)
(cd guests && cargo clippy --workspace --release -- -D warnings)

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# A crate's README is both its crates.io page and its crate docs: every link must resolve in both.
python3 scripts/check-readme-links.py --doc-dir target/doc
# Error messages: lower case, no trailing period, no source printed twice (CONTRIBUTING).
python3 scripts/check-error-messages.py

step "packages (each library crate built from its .crate alone)"
for crate in crates/*/; do
    for license in LICENSE-APACHE LICENSE-BSD-3-Clause; do
        cmp "$license" "$crate$license" || { echo "$crate$license differs from $license"; exit 1; }
    done
done
# Packages the library crates together over a local registry, so their unpublished vmkit
# dependencies resolve, then builds each from its .crate.
# Cargo keeps the sources it unpacks from that registry under CARGO_HOME, keyed by the registry's
# path, and reuses them on the next run from the same path even when the .crate changed: a
# verification would then build against the previous run's vmkit crates. Drop them first.
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/vmkit-*
cargo package --workspace --exclude reference-vmm --exclude vmkit-benches --exclude mkdisk --locked

step "no_std builds of vmkit-paging (walker and builder; with alloc: the shadow MMU and the TLB)"
cargo build -p vmkit-paging --no-default-features --target x86_64-unknown-none --locked
cargo build -p vmkit-paging --no-default-features --features alloc --target x86_64-unknown-none --locked

step "vmkit-devices feature combinations (none, default, each feature alone)"
cargo build -p vmkit-devices --no-default-features --locked
cargo build -p vmkit-devices --locked
for feature in legacy pci virtio-blk file-disk test-utils; do
    cargo build -p vmkit-devices --no-default-features --features "$feature" --locked
done

step "tests (under coverage)"
# cargo-llvm-cov ignores every file under an `examples/` directory by default, which would hide the
# reference VMM; this regex keeps its other defaults (test, bench and toolchain sources).
cargo llvm-cov --workspace --locked --json --summary-only --output-path target/coverage.json \
    --no-default-ignore-filename-regex \
    --ignore-filename-regex '(/rustc/|/\.cargo/registry/|/tests/|/benches/|(^|/)tests\.rs$|[_-]tests\.rs$)' \
    2>&1 | tee -a "$LOG_DIR/tests.log"

step "doc tests"
cargo test --workspace --doc --locked 2>&1 | tee -a "$LOG_DIR/tests.log"

step "coverage floors"
python3 coverage/check.py target/coverage.json coverage/floors.toml

step "fuzz seed replays (stable)"
(cd fuzz && cargo test --workspace 2>&1) | tee -a "$LOG_DIR/tests.log"

step "fuzz targets, ${FUZZ_SECONDS}s each"
(cd fuzz && cargo +nightly fuzz build -O)
# The harness crate is built without coverage instrumentation (fuzz/rustc-wrapper.sh), the
# devices with it.
deps="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release/deps"
instrumented() { grep -qa __sanitizer_cov_8bit_counters_init "$(ls -t "$deps"/lib"$1"-*.rlib | head -1)"; }
if instrumented vmkit_fuzzing || ! instrumented vmkit_devices; then
    echo "fuzz build: vmkit_fuzzing must be built without coverage instrumentation, vmkit_devices with it"
    exit 1
fi
: >"$LOG_DIR/fuzz-summary.txt"
for t in $(cd fuzz && cargo +nightly fuzz list); do
    mkdir -p "fuzz/corpus/$t"
    (cd fuzz && cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -print_final_stats=1) >"$LOG_DIR/fuzz-$t.log" 2>&1 || {
        tail -40 "$LOG_DIR/fuzz-$t.log"
        echo "fuzz target $t failed"
        exit 1
    }
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$LOG_DIR/fuzz-$t.log" | grep -Eo '[0-9]+$' | tail -1)
    printf '%-22s %12s execs in %ss\n' "$t" "${runs:-?}" "$FUZZ_SECONDS" | tee -a "$LOG_DIR/fuzz-summary.txt"
done

step "summary"
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) s += $i } END { print s + 0 }' "$LOG_DIR/tests.log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) s += $i } END { print s + 0 }' "$LOG_DIR/tests.log")
echo "fuzz executions:"; cat "$LOG_DIR/fuzz-summary.txt"
echo "elapsed: $(( $(date +%s) - started ))s"
echo "${passed:-0} passed, ${failed:-0} failed"
