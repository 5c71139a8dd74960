"""What a grammar costs before and after it is compiled: a regex's size unrolled (checked before
llguidance sees it), the memory a compile kept, and handing freed memory back."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re


def regex_elements(pattern: str) -> int:
    """How many elements ``pattern`` unrolls to, each counted repetition multiplied out (an open
    one counts its minimum, or once): what building its automaton costs. 0 for a pattern
    Python's ``re`` cannot read (Rust's regex syntax is wider): llguidance's limits judge it."""
    import re._constants as c
    import re._parser as p

    repeats = {c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", c.MAX_REPEAT)}

    def walk(items) -> int:
        total = 0
        for op, av in items:
            if op in repeats:
                lo, hi, sub = av
                total += max(lo, 1 if hi == c.MAXREPEAT else hi) * walk(sub)
            elif op is c.SUBPATTERN:
                total += walk(av[-1])
            elif op is c.BRANCH:
                total += sum(walk(b) for b in av[1])
            elif op in (c.ASSERT, c.ASSERT_NOT):
                total += walk(av[1])
            else:
                total += 1
        return total

    try:
        return walk(p.parse(pattern))
    except (re.error, RecursionError, OverflowError, ValueError):
        return 0


def resident_bytes() -> int:
    """This process's resident memory (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_memory() -> None:
    """Hand the heap's free memory back to the system (glibc keeps a freed grammar's pages)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
