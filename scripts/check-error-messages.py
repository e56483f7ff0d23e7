#!/usr/bin/env python3
"""Checks the error enums of the library crates against CONTRIBUTING's error rule.

Every error type derives `displaydoc::Display` (its variants' doc comments are their messages)
next to `thiserror::Error` (which adds `source()` and `From` only). This script checks what the
derive cannot:

- no `#[error(...)]` attribute anywhere (one mechanism: the doc comment is the message);
- each enum that derives `thiserror::Error` also derives `displaydoc::Display`;
- each message (a variant's first doc paragraph) starts lower case, unless its first word is an
  acronym, a number or a placeholder, and has no trailing period;
- a variant whose field is `#[source]` or `#[from]` does not print that field in its message, so
  a printed chain (`{:#}` of anyhow) names each cause once.

Usage: check-error-messages.py [--list] [ROOT]   (ROOT defaults to the repository root)
"""

import pathlib
import re
import sys

SCANNED = ["crates", "examples/reference-vmm/src"]


def enums(text):
    """Yields (line, name, body) of each enum whose derive names an Error derive."""
    for m in re.finditer(r"#\[derive\(([^)]*)\)\]", text):
        derives = m.group(1)
        if not re.search(r"\bthiserror::Error\b|\bError\b", derives):
            continue
        rest = text[m.end():]
        e = re.match(r"(?:\s*#\[[^\]]*\]|\s*///[^\n]*)*\s*pub(?:\([^)]*\))?\s+enum\s+(\w+)[^{]*\{", rest)
        if not e:
            continue
        start = m.end() + e.end()
        depth, i = 1, start
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        line = text.count("\n", 0, m.start()) + 1
        yield line, e.group(1), derives, text[start:i - 1]


def variants(body):
    """Yields (name, message, fields) of each variant at the enum body's top level."""
    lines = body.split("\n")
    doc, i = [], 0
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("///"):
            doc.append(s[3:].strip())
            i += 1
            continue
        m = re.match(r"(\w+)\s*([({,]|$)", s)
        if m and not s.startswith("#"):
            # The variant's fields run to its matching close.
            text, depth = s, s.count("(") + s.count("{") - s.count(")") - s.count("}")
            while depth > 0:
                i += 1
                text += "\n" + lines[i]
                depth += lines[i].count("(") + lines[i].count("{")
                depth -= lines[i].count(")") + lines[i].count("}")
            para = []
            for d in doc:
                if not d:
                    break
                para.append(d)
            yield m.group(1), " ".join(para), text
            doc = []
        elif not s.startswith("#"):
            doc = []
        i += 1


def source_field(fields):
    """The name (or tuple index) of the `#[source]`/`#[from]` field, if any."""
    m = re.search(r"#\[(?:source|from)\]\s*(?:///[^\n]*\s*)*(?:pub\s+)?(\w+)\s*:(?!:)", fields)
    if m:
        return m.group(1)
    if re.search(r"\(\s*#\[(?:source|from)\]", fields):
        return "0"
    if re.search(r"^\s*(?:pub\s+)?source\s*:", fields, re.M):
        return "source"
    return None


def starts_ok(message):
    word = message.split(" ", 1)[0]
    if not word or word[0].islower() or not word[0].isalpha():
        return True
    # An acronym (ELF, PVH, KVM, GPA, IRQ, `#PF`) or a name like `vCPU`.
    return len(word) > 1 and (word[1].isupper() or word[1].isdigit())


def check(root, listing):
    problems, count = [], 0
    for path in sorted(p for d in SCANNED for p in (root / d).rglob("*.rs")):
        text = path.read_text()
        rel = path.relative_to(root)
        for m in re.finditer(r"#\[error\(", text):
            problems.append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: #[error(...)] attribute")
        for line, name, derives, body in enums(text):
            if "displaydoc::Display" not in derives:
                problems.append(f"{rel}:{line}: {name} derives Error without displaydoc::Display")
                continue
            for variant, message, fields in variants(body):
                count += 1
                where = f"{rel}:{line}: {name}::{variant}"
                if listing:
                    print(f"{where}: {message}")
                if not message:
                    problems.append(f"{where}: no doc comment (no message)")
                    continue
                if not starts_ok(message):
                    problems.append(f"{where}: message starts upper case: {message!r}")
                if message.endswith("."):
                    problems.append(f"{where}: message ends with a period: {message!r}")
                src = source_field(fields)
                if src and re.search(r"\{" + re.escape(src) + r"(:[^}]*)?\}", message):
                    problems.append(f"{where}: message prints its source field {{{src}}}")
    return problems, count


def main():
    args = [a for a in sys.argv[1:] if a != "--list"]
    root = pathlib.Path(args[0]) if args else pathlib.Path(__file__).resolve().parent.parent
    problems, count = check(root, "--list" in sys.argv)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problems in {count} error variants")
        return 1
    if count == 0:
        print("no error variants found: the scan is broken")
        return 1
    print(f"{count} error variants follow the rule")
    return 0


if __name__ == "__main__":
    sys.exit(main())
