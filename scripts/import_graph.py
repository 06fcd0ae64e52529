"""Print the import graph between packages and any cycles in it (`make lint` prints it too).

    .venv/bin/python scripts/import_graph.py [ROOT_PACKAGE ...]   # default: airavata_prefect

Edges are between the second-level packages (`airavata_prefect.flows -> airavata_prefect.domain`),
or between the roots themselves when several are given (a tree whose folders are top-level
packages). Used to measure the layering before and after a change; `lint-imports` enforces it.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import grimp


def package_of(module: str, roots: list[str]) -> str:
    parts = module.split(".")
    return parts[0] if len(roots) > 1 else ".".join(parts[:2])


def edges(roots: list[str]) -> dict[str, dict[str, int]]:
    graph = grimp.build_graph(*roots)
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for module in graph.modules:
        src = package_of(module, roots)
        for imported in graph.find_modules_directly_imported_by(module):
            dst = package_of(imported, roots)
            if dst != src and dst.split(".")[0] in roots:
                out[src][dst] += 1
    return out


def cycles(out: dict[str, dict[str, int]]) -> list[list[str]]:
    found: list[list[str]] = []
    nodes = sorted(set(out) | {d for v in out.values() for d in v})
    for start in nodes:  # every elementary cycle through `start` with larger nodes only
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(out.get(node, {})):
                if nxt == start:
                    found.append([*path, start])
                elif nxt > start and nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    return found


def main(argv: list[str]) -> int:
    roots = argv or ["airavata_prefect"]
    out = edges(roots)
    for src in sorted(out):
        for dst, n in sorted(out[src].items()):
            print(f"{src} -> {dst} ({n} imports)")
    found = cycles(out)
    print(f"{len(found)} cycle(s)" + "".join(f"\n  {' -> '.join(c)}" for c in found))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
