#!/usr/bin/env python3
"""scripts/check-link-order.py BINARY LIST - is the binary linked in the list's order?

crates/legate/build.rs asks the linker to place the functions named in LIST (made by
scripts/link-order) first in BINARY's code, in the list's order. This checks that it did:
the listed functions the binary has must open its .text section, in the list's order. It
fails if they do not (the build lost the order: another linker, the list no longer passed)
and only warns when the list names few of the binary's functions (stale after code changes,
or made with another toolchain: rerun scripts/link-order). Needs the binary's symbol table (the release profile keeps
it) and `nm`.
"""
import subprocess
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    binary, listing = sys.argv[1], sys.argv[2]
    wanted = [line.strip() for line in open(listing) if line.strip()]
    out = subprocess.run(["nm", "-n", "--defined-only", binary], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"check-link-order: nm {binary}: {out.stderr.strip()}", file=sys.stderr)
        return 1
    text = [line.split()[2] for line in out.stdout.splitlines()
            if len(line.split()) == 3 and line.split()[1] in "tTwW"]
    if not text:
        print(f"check-link-order: {binary} has no symbol table (stripped?)", file=sys.stderr)
        return 1
    present = set(text)
    listed = [s for s in wanted if s in present]
    if not listed:
        # Symbol names carry a hash of the compiler and the build settings: a list made with
        # another toolchain names nothing here. Not this check's failure; the order just lapsed.
        print(f"check-link-order: warning: none of the {len(wanted)} functions in {listing} is "
              f"in {binary} (made by another toolchain?): rerun scripts/link-order", file=sys.stderr)
        return 0
    # Symbols with several names (aliases) may sit at one address in any order, so compare the
    # order of first appearance, not neighbours.
    head = [s for s in text[: len(listed) * 2] if s in set(listed)]
    placed = [s for s in dict.fromkeys(head)]
    expected = listed[: len(placed)]
    misplaced = sum(1 for a, b in zip(placed, expected) if a != b)
    print(f"check-link-order: {len(listed)} of {len(wanted)} listed functions in the binary; "
          f"{len(placed)} open its code, {misplaced} out of the list's order")
    if len(placed) < len(listed) * 0.9 or misplaced > len(placed) * 0.1:
        print("check-link-order: the binary is not linked in the list's order", file=sys.stderr)
        return 1
    if len(listed) < len(wanted) * 0.5:
        print(f"check-link-order: warning: only {len(listed)} of {len(wanted)} listed functions "
              "remain; rerun scripts/link-order", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
