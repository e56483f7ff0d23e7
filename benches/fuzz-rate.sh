#!/usr/bin/env bash
# Executions per second of fuzz targets at two revisions, run in the same invocation: the targets
# of the working tree and those of BASE (any git revision: a commit, a tag, a branch), built with
# the same toolchain and flags, each started from its own revision's committed seeds into a fresh
# empty corpus, interleaved (base, head, base, head, ...) so that a machine's load falls on both.
#
# Usage: benches/fuzz-rate.sh BASE [TARGET...]    (default: every target of the working tree)
#   FUZZ_SECONDS=N   seconds per run (default 20)
#   ROUNDS=N         runs per revision and target (default 3)
#
# Prints, per target, the median executions per second of each revision, head / base, and the
# edges (libFuzzer's `cov:`) each reached at the end of its median run. Edges count the target's
# own code besides the code under test (and the harness's, at revisions that built vmkit-fuzzing
# with coverage instrumentation), so they compare a target with itself, not targets with each
# other. A target that BASE lacks is run on the working tree alone. Installs what it needs
# (nightly, cargo-fuzz).
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: benches/fuzz-rate.sh BASE [TARGET...]" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
base=$1
shift
seconds=${FUZZ_SECONDS:-20}
rounds=${ROUNDS:-3}
triple=$(rustc -vV | sed -n 's/^host: //p')

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz-rate: rustup toolchain install nightly" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz-rate: cargo install cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi

rev=$(git -C "$root" rev-parse --verify --quiet "$base^{commit}") ||
    { echo "fuzz-rate: $base is not a revision of this repository" >&2; exit 2; }
tree="$root/target/fuzz-rate/$rev"
if [ ! -d "$tree" ]; then
    # A checkout removed with target/ leaves its registration behind.
    git -C "$root" worktree prune
    echo "fuzz-rate: checking out $base ($rev) in $tree" >&2
    git -C "$root" worktree add --detach --force "$tree" "$rev" >/dev/null 2>&1 ||
        { echo "fuzz-rate: cannot check out $base" >&2; exit 1; }
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd "$root/fuzz" && cargo +nightly fuzz list)
fi
base_targets=$(cd "$tree/fuzz" && cargo +nightly fuzz list)

for dir in "$tree" "$root"; do
    echo "fuzz-rate: building the fuzz targets of $dir" >&2
    (cd "$dir/fuzz" && cargo +nightly fuzz build -O >/dev/null 2>&1) ||
        { echo "fuzz-rate: cannot build the fuzz targets of $dir" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/vmkit-fuzz-rate.XXXXXX")
trap 'rm -rf "$work"' EXIT

# One run: prints "execs_per_second edges".
run() {
    local dir=$1 t=$2 corpus
    corpus=$(mktemp -d "$work/corpus.XXXXXX")
    (cd "$dir/fuzz" && "./target/$triple/release/$t" "$corpus" "seeds/$t" \
        -max_total_time="$seconds" -seed=1 -print_final_stats=1) >"$work/log" 2>&1 ||
        { tail -20 "$work/log" >&2; echo "fuzz-rate: $t failed in $dir" >&2; exit 1; }
    local runs edges
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$work/log" | grep -Eo '[0-9]+$')
    edges=$(grep -Eo 'cov: [0-9]+' "$work/log" | tail -1 | grep -Eo '[0-9]+$')
    echo "$(( runs / seconds )) ${edges:-0}"
}

# Median of "rate edges" lines by rate: prints the median line.
median() { sort -n | awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }'; }

printf '%-20s %12s %12s %8s %12s %12s\n' target "base exec/s" "head exec/s" head/base "base edges" "head edges"
for t in "${targets[@]}"; do
    : >"$work/base" ; : >"$work/head"
    in_base=0
    grep -qx "$t" <<<"$base_targets" && in_base=1
    for _ in $(seq "$rounds"); do
        [ $in_base = 1 ] && run "$tree" "$t" >>"$work/base"
        run "$root" "$t" >>"$work/head"
    done
    read -r hr he < <(median <"$work/head")
    if [ $in_base = 1 ]; then
        read -r br be < <(median <"$work/base")
        ratio=$(awk -v h="$hr" -v b="$br" 'BEGIN { if (b > 0) printf "%.2f", h / b; else print "-" }')
        printf '%-20s %12s %12s %8s %12s %12s\n' "$t" "$br" "$hr" "$ratio" "$be" "$he"
    else
        printf '%-20s %12s %12s %8s %12s %12s\n' "$t" - "$hr" new - "$he"
    fi
done
echo "(${rounds} runs of ${seconds}s per revision and target, medians; base $base = ${rev:0:12})"
