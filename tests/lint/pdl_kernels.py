#!/usr/bin/env python3
"""Checks the contract of programmatic dependent launch (src/core/cuda/pdl.cuh) in the sources.

A kernel launched by launch_pdl() may start while the kernel before it still runs, so its first
statement must be pdl_begin() (or pdl_begin_after(...), pdl_wait()): nothing before it may touch
global memory or return. A CUDA build cannot check that and a GPU test would only catch it as a
rare race, so this reads every launch_pdl() call under src/, finds the kernel it launches in the
same file and checks that kernel's first statement.

Usage: pdl_kernels.py SRC_DIR   (exit 0: every launch keeps the contract; 1: the list of those
that do not)
"""
import pathlib
import re
import sys

FIRST_STATEMENTS = ("pdl_begin(", "pdl_begin_after(", "pdl_wait(")
KERNEL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^()]*(?:\([^()]*\)[^()]*)*\)\s*)?(\w+)\s*\(")
# The fewest launch sites the sources hold: fewer means this script stopped recognising them.
MIN_LAUNCHES = 30


def strip_comments(text):
    """The text with // and /* */ comments blanked (string and character literals kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching(text, i, open_ch, close_ch):
    """Index of the bracket closing the one at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_ch:
            depth += 1
        elif text[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError("unbalanced " + open_ch)


def first_argument(text, i):
    """The first argument of the call whose '(' is at text[i] (commas inside (), <>, [] skipped)."""
    depth, j = 0, i + 1
    while j < len(text):
        c = text[j]
        if c in "(<[":
            depth += 1
        elif c in ")>]":
            if depth == 0:
                break
            depth -= 1
        elif c == "," and depth == 0:
            break
        j += 1
    return text[i + 1:j].strip()


def kernels_of(text):
    """{kernel name: [whether each definition's body opens with the PDL wait]}."""
    found = {}
    for m in KERNEL.finditer(text):
        close = matching(text, m.end() - 1, "(", ")")
        body = text.find("{", close)
        if body < 0 or text[close + 1:body].strip():  # a declaration, not a definition
            continue
        first = text[body + 1:].lstrip()
        first = re.sub(r"^(?:g4::)?cuda::", "", first)
        found.setdefault(m.group(1), []).append(first.startswith(FIRST_STATEMENTS))
    return found


def launched_kernels(text, at, argument, kernels):
    """The kernels a launch_pdl() first argument (the call at text[at]) names, directly or through a
    local alias: the alias's last assignment before the call."""
    names = set()
    for ident in re.findall(r"[A-Za-z_]\w*", argument):
        if ident in kernels:
            names.add(ident)
            continue
        aliases = list(re.finditer(r"\b" + ident + r"\s*=\s*&?\s*(\w+)", text[:at]))
        if aliases and aliases[-1].group(1) in kernels:
            names.add(aliases[-1].group(1))
    return names


def main():
    src = pathlib.Path(sys.argv[1])
    problems, launches = [], 0
    for path in sorted(p for p in src.rglob("*") if p.suffix in (".cu", ".cuh", ".cpp", ".h")):
        text = strip_comments(path.read_text())
        kernels = kernels_of(text)
        for m in re.finditer(r"\blaunch_pdl\s*\(", text):
            argument = first_argument(text, m.end() - 1)
            if not argument or re.search(r"void\s*\(\s*\*", argument):  # the template's own definition
                continue
            launches += 1
            line = text.count("\n", 0, m.start()) + 1
            names = launched_kernels(text, m.start(), argument, kernels)
            if not names:
                problems.append(f"{path}:{line}: launch_pdl({argument}, ...): no kernel of that name is defined in "
                                "this file")
            for name in sorted(names):
                if not all(kernels[name]):
                    problems.append(f"{path}:{line}: {name} is launched by launch_pdl() but its first statement is "
                                    "not pdl_begin(), pdl_begin_after(...) or pdl_wait()")
    if launches < MIN_LAUNCHES:
        problems.append(f"only {launches} launch_pdl() calls found under {src} (at least {MIN_LAUNCHES} expected): "
                        "this check no longer recognises them")
    for p in problems:
        print(p)
    print(f"{launches} launch_pdl() calls checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
