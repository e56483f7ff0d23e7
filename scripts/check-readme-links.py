#!/usr/bin/env python3
"""Fails on a crate README link that only rustdoc can resolve.

Each library crate's README is both its crates.io page and its crate documentation
(`#![doc = include_str!("../README.md")]`). A rustdoc intra-doc link — `[Foo]` or `[`Foo`]` with
no definition, or `[text](crate::Foo)` — resolves in rustdoc but shows as bare brackets on
crates.io. Every link in a crate README must therefore name its target in the README itself: a
reference definition (`[`Foo`]: https://docs.rs/...`) or an inline URL, both of which render in
both places. Code blocks and code spans are not links and are skipped.

With `--doc-dir DIR` (the output of `cargo doc`), every docs.rs link into one of the checked
crates must also name a page, and an anchor on it, that rustdoc generated: a link left behind by
a moved or renamed item fails here rather than on docs.rs.

    python3 scripts/check-readme-links.py [--doc-dir target/doc] [README.md ...]
    (default: crates/*/README.md)
"""

import glob
import os
import re
import sys

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
DEFINITION = re.compile(r"^ {0,3}\[((?:\\.|[^\\\[\]])+)\]:[ \t]*(\S+)")
# A target both renderers resolve: a web URL, or an anchor in the same page.
RESOLVABLE = re.compile(r"^(https?://|mailto:|#)")
DOCS_RS = re.compile(r"^https://docs\.rs/([A-Za-z0-9_-]+)/[^/]+/([A-Za-z0-9_]+)/([^#]*)(?:#(.*))?$")


def mask(text):
    """The text with fenced code blocks blanked and code-span contents replaced by `x`.

    Offsets and line breaks are kept, so positions in the mask are positions in the text.
    """
    lines = []
    fence = None
    for line in text.split("\n"):
        m = FENCE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            lines.append(" " * len(line))
        elif m:
            fence = m.group(1)
            lines.append(" " * len(line))
        else:
            lines.append(line)
    masked = "\n".join(lines)
    # Code spans: a run of backticks up to the next run of the same length.
    out = list(masked)
    for m in re.finditer(r"(`+)(.+?)(?<!`)\1(?!`)", masked, re.S):
        for i in range(m.start(2), m.end(2)):
            if out[i] != "\n":
                out[i] = "x"
    return "".join(out)


def normalize(label):
    return " ".join(label.split()).casefold()


def missing_doc_page(url, doc_dir, crates):
    """Why `url`, a docs.rs link into one of `crates`, names no page `cargo doc` made (or None)."""
    m = DOCS_RS.match(url)
    if not m or m.group(1) not in crates:
        return None
    page = m.group(3) or "index.html"
    if page.endswith("/"):
        page += "index.html"
    file = os.path.join(doc_dir, m.group(2), page)
    if not os.path.isfile(file):
        return f"no page {m.group(2)}/{page} in the generated docs"
    if m.group(4):
        with open(file, encoding="utf-8") as f:
            if f'id="{m.group(4)}"' not in f.read():
                return f"no #{m.group(4)} on {m.group(2)}/{page} in the generated docs"
    return None


def check(path, doc_dir=None, crates=()):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    masked = mask(text)
    problems = []

    def line_of(offset):
        return text.count("\n", 0, offset) + 1

    defined = set()
    definition_spans = []
    offset = 0
    previous = ""
    for line in masked.split("\n"):
        m = DEFINITION.match(line)
        # A definition cannot interrupt a paragraph: `[x]: ...` on a paragraph's next line is text.
        starts_block = not previous.strip() or previous.lstrip().startswith("#") or DEFINITION.match(previous)
        previous = line
        if m and starts_block:
            label = text[offset + m.start(1) : offset + m.end(1)]
            target = text[offset + m.start(2) : offset + m.end(2)]
            defined.add(normalize(label))
            definition_spans.append((offset, offset + len(line)))
            if not RESOLVABLE.match(target):
                problems.append((line_of(offset), f"[{label}]: {target}", "target is not a URL"))
            elif doc_dir is not None:
                why = missing_doc_page(target, doc_dir, crates)
                if why:
                    problems.append((line_of(offset), f"[{label}]: {target}", why))
        offset += len(line) + 1

    def in_definition(pos):
        return any(start <= pos < end for start, end in definition_spans)

    # `[text]`, optionally followed by `(target)` or `[label]`; not an escaped or image-less `\[`.
    link = re.compile(r"(?<!\\)\[((?:\\.|[^\\\[\]])*)\](?:\(([^)\s]*)[^)]*\)|\[((?:\\.|[^\\\[\]])*)\])?")
    for m in link.finditer(masked):
        if in_definition(m.start()):
            continue
        shown = text[m.start() : m.end()]
        label = text[m.start(1) : m.end(1)]
        if m.group(2) is not None:
            target = text[m.start(2) : m.end(2)]
            if not RESOLVABLE.match(target):
                problems.append((line_of(m.start()), shown, "target is not a URL"))
            elif doc_dir is not None:
                why = missing_doc_page(target, doc_dir, crates)
                if why:
                    problems.append((line_of(m.start()), shown, why))
            continue
        if m.group(3) is not None and m.group(3).strip():
            label = text[m.start(3) : m.end(3)]
        if normalize(label) not in defined:
            problems.append((line_of(m.start()), shown, "no link definition in the README"))
    return [(path, line, shown, why) for line, shown, why in problems]


def main(args):
    doc_dir = None
    if args[:1] == ["--doc-dir"] and len(args) > 1:
        doc_dir, args = args[1], args[2:]
    paths = args or sorted(glob.glob("crates/*/README.md"))
    # The crates whose docs `cargo doc` generated: the directories holding the READMEs.
    crates = {os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths}
    problems = sorted(p for path in paths for p in check(path, doc_dir, crates))
    for path, line, shown, why in problems:
        print(f"{path}:{line}: {' '.join(shown.split())}: {why}")
    if problems:
        sys.stdout.flush()
        print(
            f"{len(problems)} README link problem(s): a link must resolve on crates.io and in "
            "rustdoc, so define each target in the README, for example\n"
            "    [`Foo`]: https://docs.rs/<crate>/latest/<crate_name>/struct.Foo.html\n"
            "or write a plain code span.",
            file=sys.stderr,
        )
        return 1
    print(f"README links: {len(paths)} file(s), every link has a target")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
