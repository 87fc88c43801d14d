"""Merkle tree hashes, inclusion and consistency proofs, as RFC 6962 / RFC 9162 define them.

Leaves are record hashes. ``leaf = SHA-256(0x00 || record hash)``,
``node = SHA-256(0x01 || left || right)``. A signed checkpoint commits to the root of the
first ``size`` records; an inclusion proof shows a record is under a root, a consistency
proof shows an earlier checkpoint's tree is a prefix of a later one's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence


LEAF_PREFIX, NODE_PREFIX = b"\x00", b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def leaf_hashes(datas: Iterable[bytes]) -> list[bytes]:
    """:func:`leaf_hash` of each, in one list comprehension (no call per leaf)."""
    sha256 = hashlib.sha256
    return [sha256(LEAF_PREFIX + data).digest() for data in datas]


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves."""
    if not leaves:
        return EMPTY_ROOT
    return Frontier.of(leaves).root()


class Frontier:
    """The roots of the perfect subtrees covering the leaves so far (a binary counter):
    enough to extend the tree one leaf at a time and to compute its root, in O(log n)."""

    def __init__(self, size: int = 0, nodes: list[bytes] | None = None) -> None:
        self.size = size
        self.nodes = list(nodes or [])  # left to right: the largest subtree first

    @classmethod
    def of(cls, leaves: Sequence[bytes]) -> Frontier:
        frontier = cls()
        for leaf in leaves:
            frontier.append(leaf)
        return frontier

    def append(self, leaf: bytes) -> None:
        self.append_subtree(leaf, 0)

    def append_subtree(self, node: bytes, height: int) -> None:
        """Extend the tree by the perfect subtree of ``2**height`` leaves whose root is ``node``: a
        carry in the binary counter from bit ``height``. Only where such a subtree starts, so that
        the tree stays the one a leaf-by-leaf append would build."""
        assert self.size % (1 << height) == 0, "a perfect subtree starts at a multiple of its size"
        size = self.size >> height
        while size & 1:
            node = node_hash(self.nodes.pop(), node)
            size >>= 1
        self.nodes.append(node)
        self.size += 1 << height

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        result = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            result = node_hash(node, result)
        return result


def subtree_roots(leaves: Sequence[bytes], start: int, cuts: Iterable[int] = ()) -> list[tuple[bytes, int]]:
    """(root, height) of the largest perfect subtrees that cover ``leaves``, the leaves of indices
    ``start``, ``start`` + 1, … of a larger tree, left to right, none across a tree size in
    ``cuts``: appended in order with :meth:`Frontier.append_subtree` to a frontier of size
    ``start``, they build the same tree as appending every leaf, and pass by each cut's size."""
    end = start + len(leaves)
    stops = sorted({cut for cut in cuts if start < cut < end} | {end})
    roots, index = [], start
    for stop in stops:
        while index < stop:
            width = 1 << ((stop - index).bit_length() - 1)  # the most that fits before the stop…
            if index:
                width = min(width, index & -index)  # …and starts at a multiple of its size
            offset = index - start
            roots.append((_perfect_root(leaves[offset:offset + width]), width.bit_length() - 1))
            index += width
    return roots


def _perfect_root(level: Sequence[bytes]) -> bytes:
    """The root over a power-of-two number of leaves, a level at a time (no call per node)."""
    sha256 = hashlib.sha256
    while len(level) > 1:
        level = [sha256(NODE_PREFIX + left + right).digest() for left, right in zip(level[::2], level[1::2])]
    return level[0]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, leaves): the audit path of leaf ``index`` in the tree of ``leaves``."""
    if not 0 <= index < len(leaves):
        raise ValueError("leaf index outside the tree")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return inclusion_proof(leaves[:k], index) + [root(leaves[k:])]
    return inclusion_proof(leaves[k:], index - k) + [root(leaves[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, result = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = node_hash(p, result)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            result = node_hash(result, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and result == expected_root


def consistency_proof(leaves: Sequence[bytes], first: int) -> list[bytes]:
    """PROOF(first, leaves): that the first ``first`` leaves are a prefix of ``leaves``."""
    if not 0 < first <= len(leaves):
        raise ValueError("the earlier size must be between 1 and the later size")

    def subproof(m: int, part: Sequence[bytes], whole: bool) -> list[bytes]:
        n = len(part)
        if m == n:
            return [] if whole else [root(part)]
        k = _split(n)
        if m <= k:
            return subproof(m, part[:k], whole) + [root(part[k:])]
        return subproof(m - k, part[k:], False) + [root(part[:k])]

    return subproof(first, leaves, True)


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if not 0 < first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the earlier root is itself a node
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
