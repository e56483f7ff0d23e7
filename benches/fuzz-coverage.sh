#!/usr/bin/env bash
# What recorded seeds are worth to the fuzzers: for each device-facing fuzz target with seeds
# taken from recordings (files named recorded-* in fuzz/seeds/<target>/), fuzz it twice from a
# fresh empty corpus, once from its written seeds only and once from its recorded seeds only,
# then measure the line and branch coverage of vmkit-devices' and vmkit-exits' sources that each
# resulting corpus (with the seeds it started from) reaches.
#
# Usage: benches/fuzz-coverage.sh [TARGET...]     (default: every target with recorded seeds)
#   FUZZ_SECONDS=N   seconds of fuzzing per run (default 60)
#   KEEP_WORK=1      keep the corpora, profiles and reports (their directory is printed)
#
# Installs what it needs (the nightly toolchain, its llvm-tools, cargo-fuzz). Prints a table:
#   target | seeds | devices lines % | devices branches % | exits lines % | exits branches %
# where each percentage is over all the code of that crate the coverage build instruments (used
# by the target or not), counted apart for vmkit-devices and vmkit-exits.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
seconds=${FUZZ_SECONDS:-60}
triple=$(rustc -vV | sed -n 's/^host: //p')

# --- what the script needs -------------------------------------------------------------------
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz-coverage: rustup toolchain install nightly" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! rustup +nightly component list --installed | grep -q '^llvm-tools'; then
    echo "fuzz-coverage: rustup component add llvm-tools-preview (nightly)" >&2
    rustup component add llvm-tools-preview --toolchain nightly
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz-coverage: cargo install cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --quiet
fi
llvm_bin="$(rustc +nightly --print sysroot)/lib/rustlib/$triple/bin"
llvm_cov="$llvm_bin/llvm-cov"
[ -x "$llvm_cov" ] || { echo "fuzz-coverage: no llvm-cov in $llvm_bin" >&2; exit 1; }

# --- which targets -----------------------------------------------------------------------------
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for t in $(cd "$fuzz" && cargo +nightly fuzz list); do
        if compgen -G "$fuzz/seeds/$t/recorded-*" >/dev/null; then
            targets+=("$t")
        fi
    done
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz-coverage: no target has recorded seeds" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/vmkit-fuzz-coverage.XXXXXX")
if [ "${KEEP_WORK:-0}" = 1 ]; then
    echo "fuzz-coverage: work directory $work" >&2
else
    trap 'rm -rf "$work"' EXIT
fi

# Branch coverage needs the compiler's branch instrumentation; cargo-fuzz adds RUSTFLAGS to its
# own. The coverage build goes to its own target directory, so the fuzzing build is untouched.
coverage_flags="-Zcoverage-options=branch"

# Prints "lines_covered lines_count branches_covered branches_count" for each of the two crates
# (devices first) from `llvm-cov export -summary-only` JSON on stdin.
summarize() {
    python3 -c '
import json, sys
report = json.load(sys.stdin)
sums = {"vmkit-devices": [0, 0, 0, 0], "vmkit-exits": [0, 0, 0, 0]}
for data in report["data"]:
    for f in data["files"]:
        for crate, s in sums.items():
            if "/crates/" + crate + "/src/" in f["filename"]:
                lines, branches = f["summary"]["lines"], f["summary"]["branches"]
                s[0] += lines["covered"]; s[1] += lines["count"]
                s[2] += branches["covered"]; s[3] += branches["count"]
pct = lambda covered, count: "%.1f" % (100.0 * covered / count) if count else "-"
d, e = sums["vmkit-devices"], sums["vmkit-exits"]
print(pct(d[0], d[1]), pct(d[2], d[3]), pct(e[0], e[1]), pct(e[2], e[3]),
      "%d/%d %d/%d %d/%d %d/%d" % (d[0], d[1], d[2], d[3], e[0], e[1], e[2], e[3]))
'
}

results="$work/results.txt"
: >"$results"
for t in "${targets[@]}"; do
    seeds="$fuzz/seeds/$t"
    [ -d "$seeds" ] || { echo "fuzz-coverage: no seeds for $t" >&2; exit 1; }
    mkdir -p "$work/$t/written" "$work/$t/recorded"
    for f in "$seeds"/*; do
        case "$(basename "$f")" in
        recorded-*) cp "$f" "$work/$t/recorded/" ;;
        *) cp "$f" "$work/$t/written/" ;;
        esac
    done
    (cd "$fuzz" && cargo +nightly fuzz build -O "$t" >/dev/null 2>&1) || {
        echo "fuzz-coverage: cannot build $t" >&2
        exit 1
    }
    for kind in written recorded; do
        if [ -z "$(ls -A "$work/$t/$kind")" ]; then
            printf '%s %s - - - - no seeds\n' "$t" "$kind" >>"$results"
            continue
        fi
        corpus="$work/$t/corpus-$kind"
        mkdir -p "$corpus"
        echo "fuzz-coverage: $t from its $kind seeds, ${seconds}s" >&2
        (cd "$fuzz" && cargo +nightly fuzz run -O "$t" "$corpus" "$work/$t/$kind" -- \
            -max_total_time="$seconds" -seed=1 -print_final_stats=1) \
            >"$work/$t/fuzz-$kind.log" 2>&1 || {
            tail -20 "$work/$t/fuzz-$kind.log" >&2
            echo "fuzz-coverage: $t failed from its $kind seeds" >&2
            exit 1
        }
        (cd "$fuzz" && RUSTFLAGS="${RUSTFLAGS:-} $coverage_flags" \
            cargo +nightly fuzz coverage "$t" "$corpus" "$work/$t/$kind") \
            >"$work/$t/coverage-$kind.log" 2>&1 || {
            tail -20 "$work/$t/coverage-$kind.log" >&2
            echo "fuzz-coverage: coverage of $t failed" >&2
            exit 1
        }
        profile="$work/$t/$kind.profdata"
        cp "$fuzz/coverage/$t/coverage.profdata" "$profile"
        binary="$fuzz/target/$triple/coverage/$triple/release/$t"
        "$llvm_cov" export -summary-only -instr-profile="$profile" "$binary" >"$work/$t/$kind.json"
        inputs=$(( $(ls "$corpus" | wc -l) + $(ls "$work/$t/$kind" | wc -l) ))
        printf '%s %s %s %s\n' "$t" "$kind" "$(summarize <"$work/$t/$kind.json")" "($inputs inputs)" \
            >>"$results"
    done
done

echo
echo "fuzz coverage after ${seconds}s per run: lines and branches of vmkit-devices (dev) and vmkit-exits (exits)"
printf '%-16s %-9s %9s %9s %10s %9s   %s\n' target seeds "dev lines" "dev br" "exits lines" "exits br" \
    "covered/total: dev lines, branches; exits lines, branches"
while read -r t kind dl db el eb rest; do
    printf '%-16s %-9s %8s%% %8s%% %9s%% %8s%%   %s\n' "$t" "$kind" "$dl" "$db" "$el" "$eb" "$rest"
done <"$results"
