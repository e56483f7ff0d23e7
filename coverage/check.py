#!/usr/bin/env python3
"""Fails when a crate's line coverage is under its floor.

Usage: check.py COVERAGE_JSON FLOORS_TOML

COVERAGE_JSON is cargo-llvm-cov's `--json` export. Lines are attributed to a crate by the path of
their file: `crates|examples|tools/<name>/src/...`.
"""
import json
import sys
import tomllib
from pathlib import Path


def per_crate(report):
    totals = {}
    for data in report["data"]:
        for f in data["files"]:
            parts = Path(f["filename"]).parts
            for i in range(len(parts) - 2):
                if parts[i] in ("crates", "examples", "tools") and parts[i + 2] == "src":
                    name = parts[i + 1]
                    lines = f["summary"]["lines"]
                    count, covered = totals.get(name, (0, 0))
                    totals[name] = (count + lines["count"], covered + lines["covered"])
                    break
    return totals


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    report = json.loads(Path(sys.argv[1]).read_text())
    floors = tomllib.loads(Path(sys.argv[2]).read_text())["floors"]
    totals = per_crate(report)
    failures = []
    print(f"{'crate':<16} {'lines':>7} {'covered':>8} {'coverage':>9} {'floor':>6}")
    for name, floor in sorted(floors.items()):
        count, covered = totals.get(name, (0, 0))
        pct = 100.0 * covered / count if count else 0.0
        ok = count > 0 and pct >= floor
        print(f"{name:<16} {count:>7} {covered:>8} {pct:>8.2f}% {floor:>5}% {'' if ok else ' BELOW FLOOR'}")
        if not ok:
            failures.append(name)
    for name in sorted(set(totals) - set(floors)):
        print(f"{name}: no floor in {sys.argv[2]}; add one")
        failures.append(name)
    if failures:
        sys.exit(f"coverage: under the floor or without one: {', '.join(failures)}")


if __name__ == "__main__":
    main()
