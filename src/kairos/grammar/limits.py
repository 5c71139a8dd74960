"""What a grammar costs before and after it is compiled: a regex's size unrolled (checked before
llguidance sees it), the memory a compile kept, and handing freed memory back."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import warnings

try:  # (Python 3.11 renamed them)
    import re._constants as _c
    import re._parser as _p
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c
    import sre_parse as _p

_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", _c.MAX_REPEAT)}
# Rust's regex syntax that Python's ``re`` lacks, rewritten to a stand-in of the same size (an
# escape only after an even run of backslashes: ``\\p{3}`` is a backslash and three p's)
_UNESCAPED = r"(?<!\\)((?:\\\\)*)"
_RUST_ONLY = [(re.compile(_UNESCAPED + r"\\[pP](?:\{[^}]*\}|[A-Za-z])"), r"\1."),
              (re.compile(_UNESCAPED + r"\\[xuU]\{[0-9A-Fa-f]+\}"), r"\1."),
              (re.compile(_UNESCAPED + r"\\z"), r"\1$"),
              (re.compile(r"\(\?<(?=[A-Za-z_])"), "(?P<")]
# a counted repetition, not an escape's braces
_COUNTED = re.compile(_UNESCAPED + r"(?<![\\xuUpP])\{(\d+)(?:,(\d*))?\}")


def regex_elements(pattern: str) -> int:
    """How many elements ``pattern`` unrolls to, each counted repetition multiplied out (an open
    one counts its minimum, or once): what building its automaton costs. Rust's syntax where
    Python's differs is read as a stand-in of the same size; a pattern ``re`` still cannot read
    counts as the product of all its counted repetitions (an upper bound)."""

    def walk(items) -> int:
        total = 0
        for op, av in items:
            if op in _REPEATS:
                lo, hi, sub = av
                total += max(lo, 1 if hi == _c.MAXREPEAT else hi) * walk(sub)
            elif op is _c.SUBPATTERN:
                total += walk(av[-1])
            elif op is _c.BRANCH:
                total += sum(walk(b) for b in av[1])
            elif op in (_c.ASSERT, _c.ASSERT_NOT):
                total += walk(av[1])
            else:
                total += 1
        return total

    readable = pattern
    for rust, stand_in in _RUST_ONLY:
        readable = rust.sub(stand_in, readable)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (re's FutureWarnings on Rust's syntax: [[:alpha:]])
            return walk(_p.parse(readable))
    except RecursionError:
        return 0  # (nested past Python's stack: llguidance refuses it for its depth)
    except (_c.error, OverflowError, ValueError):
        bound = len(pattern)
        for m in _COUNTED.finditer(pattern):
            bound *= max(1, int(m.group(3) or m.group(2)))
        return bound


def schema_patterns(schema) -> list[str]:
    """The regexes a JSON schema holds (``pattern`` values and ``patternProperties`` keys)."""
    out, stack = [], [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                out.append(node["pattern"])
            if isinstance(node.get("patternProperties"), dict):
                out.extend(k for k in node["patternProperties"] if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


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
