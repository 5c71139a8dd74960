"""Chained hashes of full KV blocks of token ids: the names under which a replica's radix cache
reports what it holds, and under which the router looks a prompt up. Block i's hash covers
blocks 0..i, so a prompt's cached prefix is its leading hashes found in a replica's set."""

from __future__ import annotations

import hashlib
from array import array

ROOT = 0
_MASK = (1 << 62) - 1  # (a hash is in [1, 2^62): a journal sends an eviction as its negative)


def block_hash(parent: int, key: tuple[int, ...] | list[int]) -> int:
    """The hash of a block whose token ids are ``key``, after the prefix hashed as ``parent``.
    blake2b, not ``hash()``: the same on every machine and Python version."""
    h = hashlib.blake2b(parent.to_bytes(8, "little") + array("q", key).tobytes(), digest_size=8)
    return (int.from_bytes(h.digest(), "little") & _MASK) or 1


def chain(token_ids: list[int], block_size: int) -> list[int]:
    """The hashes of ``token_ids``' full blocks, in order."""
    out, h = [], ROOT
    for i in range(len(token_ids) // block_size):
        h = block_hash(h, token_ids[i * block_size:(i + 1) * block_size])
        out.append(h)
    return out
