#!/usr/bin/env bash
# Linux boot milestones: Debian's kernel (as a vmlinux, by PVH) with a busybox initramfs under the
# reference VMM and under QEMU, same memory, vCPUs and command line, runs interleaved; prints a
# markdown table of the median wall time from process start to each milestone, and the ratio.
#
#   ROUNDS=N           rounds, each one run per VMM (default 3; which VMM goes first alternates)
#   LIMIT=SECONDS      the longest one run may take (default 300)
#   CMDLINE=STRING     the kernel command line (default "console=ttyS0 earlyprintk=ttyS0")
#   VMKIT_VMM=PATH     the reference VMM binary (default: target/release/reference-vmm, built)
#
# The kernel comes from scripts/fetch-linux.sh (run here; a no-op when already fetched). See
# benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
LIMIT=${LIMIT:-300}
CMDLINE=${CMDLINE:-"console=ttyS0 earlyprintk=ttyS0"}
MEMORY_GIB=2
CPUS=2
MILESTONES=("Linux version" "ACPI: Early table" "Zone ranges" "setup_percpu" "Memory:")
VMMS=("reference VMM" "QEMU")

bash scripts/fetch-linux.sh >&2
if [ -z "${VMKIT_VMM:-}" ]; then
    cargo build --release --locked -q -p reference-vmm
    VMKIT_VMM=target/release/reference-vmm
fi
command -v qemu-system-x86_64 >/dev/null || {
    echo "linux-milestones: qemu-system-x86_64 is missing (scripts/setup.sh installs it)" >&2
    exit 1
}

work=$(mktemp -d)
guest_pid=""
cleanup() {
    if [ -n "$guest_pid" ]; then kill -KILL "$guest_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The vmlinux inside the bzImage, cached as the Linux tests cache it (keyed by size and mtime).
bzimage=$(compgen -G "target/debian/root/boot/vmlinuz-*" | sort | tail -1)
vmlinux=target/debian/cache/vmlinux-$(stat -c '%s-%Y' "$bzimage")
if [ ! -f "$vmlinux" ]; then
    le() { od -An -t"u$2" -j "$1" -N "$2" "$bzimage" | tr -d ' '; }
    setup_sects=$(le $((0x1F1)) 1)
    [ "$setup_sects" != 0 ] || setup_sects=4
    start=$(( (setup_sects + 1) * 512 + $(le $((0x248)) 4) ))
    length=$(le $((0x24C)) 4)
    magic=$(od -An -tx1 -j "$start" -N 6 "$bzimage" | tr -d ' ')
    [ "$magic" = fd377a585a00 ] || {
        echo "linux-milestones: $bzimage: payload is not XZ (magic $magic)" >&2
        exit 1
    }
    mkdir -p target/debian/cache
    # The payload's last four bytes are the decompressed size, not XZ data.
    dd if="$bzimage" iflag=skip_bytes,count_bytes skip="$start" count=$((length - 4)) status=none |
        xz -dc --single-stream >"$vmlinux.$$"
    mv "$vmlinux.$$" "$vmlinux"
fi

# A newc initramfs: busybox and an /init that prints a line and powers off.
newc_pad() { head -c $(( (4 - $1 % 4) % 4 )) /dev/zero; }
newc_inode=1
newc_entry() { # name mode rdev-major rdev-minor [data file]
    local name=$1 mode=$2 size=0
    [ -z "${5:-}" ] || size=$(stat -c %s "$5")
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$newc_inode" "$mode" 0 0 1 0 "$size" 0 0 "$3" "$4" $(( ${#name} + 1 )) 0
    printf '%s\0' "$name"
    newc_pad $(( 110 + ${#name} + 1 ))
    [ -z "${5:-}" ] || cat "$5"
    newc_pad "$size"
    newc_inode=$((newc_inode + 1))
}
printf 'busybox' >"$work/sh-target"
printf '#!/bin/sh\necho vmkit: init ran\n/bin/busybox poweroff -f\n' >"$work/init"
initramfs=$work/initramfs.cpio
{
    newc_entry bin $((0040755)) 0 0
    newc_entry bin/busybox $((0100755)) 0 0 target/debian/root/bin/busybox
    newc_entry bin/sh $((0120777)) 0 0 "$work/sh-target"
    newc_entry dev $((0040755)) 0 0
    newc_entry dev/console $((0020600)) 5 1
    newc_entry proc $((0040755)) 0 0
    newc_entry sys $((0040755)) 0 0
    newc_entry init $((0100755)) 0 0 "$work/init"
    newc_inode=0
    newc_entry 'TRAILER!!!' 0 0 0
} >"$initramfs"

usec() { echo "${EPOCHREALTIME/./}"; }

# Runs one VMM; prints the seconds from its start to each milestone ("-" where it was not reached)
# on one line.
run() {
    local -a command
    case $1 in
    "reference VMM")
        command=("$VMKIT_VMM" --kernel "$vmlinux" --initramfs "$initramfs"
            --memory "size=${MEMORY_GIB}G" --cpus "boot=$CPUS" --cmdline "$CMDLINE"
            --serial tty --timeout "$LIMIT") ;;
    QEMU)
        command=(qemu-system-x86_64 -machine q35,accel=kvm -cpu host,-arch-capabilities
            -m "${MEMORY_GIB}G" -smp "$CPUS" -kernel "$vmlinux" -initrd "$initramfs"
            -append "$CMDLINE" -nographic -serial stdio -monitor none -no-reboot) ;;
    esac
    # Runs in a command substitution's subshell: its own trap ends the guest.
    trap 'if [ -n "$guest_pid" ]; then kill -KILL "$guest_pid" 2>/dev/null || true; fi' EXIT
    local fifo=$work/serial seen=0 line i now
    local -a at=()
    rm -f "$fifo"
    mkfifo "$fifo"
    local start
    start=$(usec)
    "${command[@]}" </dev/null >"$fifo" 2>"$work/stderr" &
    guest_pid=$!
    exec {serial}<"$fifo"
    local deadline=$((start + LIMIT * 1000000)) more=1
    while [ "$more" = 1 ] && [ "$seen" -lt ${#MILESTONES[@]} ]; do
        now=$(usec)
        [ "$now" -lt "$deadline" ] || break
        # At the end of the output (or the deadline) `read` fails but still returns the last,
        # unfinished line: a guest that stops right after a milestone may not end its line.
        IFS= read -r -t $(( (deadline - now) / 1000000 + 1 )) line <&"$serial" || more=0
        now=$(usec)
        for i in "${!MILESTONES[@]}"; do
            if [ -z "${at[i]:-}" ] && [[ $line == *"${MILESTONES[i]}"* ]]; then
                at[i]=$(( now - start ))
                seen=$((seen + 1))
            fi
        done
    done
    kill -TERM "$guest_pid" 2>/dev/null || true
    wait "$guest_pid" 2>/dev/null || true
    guest_pid=""
    exec {serial}<&-
    for i in "${!MILESTONES[@]}"; do
        if [ -n "${at[i]:-}" ]; then
            printf '%d.%06d ' $((at[i] / 1000000)) $((at[i] % 1000000))
        else
            printf -- '- '
        fi
    done
    echo
}

# results[vmm index, milestone index] = the seconds of every round, space-separated.
declare -A results
for round in $(seq 1 "$ROUNDS"); do
    order=(0 1)
    [ $((round % 2)) = 1 ] || order=(1 0)
    for v in "${order[@]}"; do
        times=$(run "${VMMS[v]}")
        echo "round $round, ${VMMS[v]}: $times" >&2
        read -r -a row <<<"$times"
        for i in "${!MILESTONES[@]}"; do
            results[$v,$i]="${results[$v,$i]:-} ${row[i]}"
        done
    done
done

median() { # the median of the numbers among the arguments ("-" when there is none)
    printf '%s\n' "$@" | awk '/^[0-9.]+$/' | sort -n |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) print "-";
            else if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2];
            else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "Debian $(basename "$bzimage" | sed 's/^vmlinuz-//') by PVH, ${MEMORY_GIB} GiB, $CPUS vCPUs, \`$CMDLINE\`; median of $ROUNDS rounds, seconds from process start"
echo
echo "| milestone | reference VMM | QEMU | reference VMM / QEMU |"
echo "|---|---:|---:|---:|"
for i in "${!MILESTONES[@]}"; do
    # shellcheck disable=SC2086 # word splitting of the per-round list is intended
    ours=$(median ${results[0,$i]})
    # shellcheck disable=SC2086
    theirs=$(median ${results[1,$i]})
    ratio=-
    if [ "$ours" != - ] && [ "$theirs" != - ]; then
        ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    fi
    echo "| \`${MILESTONES[i]}\` | $ours s | $theirs s | $ratio |"
done
