"""Merkle proofs hold for every tree size and position, and fail for anything else."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.merkle import (
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(hashlib.sha256(str(i).encode()).digest()) for i in range(n)]


def reference_root(items: list[bytes]) -> bytes:
    """MTH written straight from RFC 6962's definition."""
    if len(items) == 1:
        return items[0]
    k = 1
    while k * 2 < len(items):
        k *= 2
    return node_hash(reference_root(items[:k]), reference_root(items[k:]))


@given(st.integers(1, 130))
def test_incremental_frontier_root_equals_the_rfc_definition(n):
    assert root(leaves(n)) == reference_root(leaves(n))
    frontier = Frontier()
    for i, leaf in enumerate(leaves(n), start=1):
        frontier.append(leaf)
        assert frontier.root() == reference_root(leaves(i))


@settings(max_examples=200)
@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_proof_verifies_and_a_wrong_leaf_or_index_does_not(case):
    n, index = case
    items = leaves(n)
    proof = inclusion_proof(items, index)
    tree_root = root(items)
    assert verify_inclusion(items[index], index, n, proof, tree_root)
    assert not verify_inclusion(leaf_hash(b"forged"), index, n, proof, tree_root)
    if n > 1:
        assert not verify_inclusion(items[index], (index + 1) % n, n, proof, tree_root)


@settings(max_examples=200)
@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_proof_verifies_and_a_rewritten_prefix_does_not(case):
    first, second = case
    items = leaves(second)
    proof = consistency_proof(items, first)
    assert verify_consistency(first, second, root(items[:first]), root(items), proof)
    rewritten = [leaf_hash(b"rewritten")] + items[1:]
    assert not verify_consistency(first, second, root(rewritten[:first]), root(items), proof)
