"""Merkle proofs hold for every tree size and position, and fail for anything else."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    subtree_roots,
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


@settings(max_examples=300)
@given(st.integers(0, 300).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, n), st.lists(st.integers(0, n), max_size=6), st.lists(st.integers(0, n + 3), max_size=8))))
def test_a_frontier_extended_by_whole_subtrees_is_the_leaf_by_leaf_frontier(case):
    """A frontier of ``start`` leaves, extended by the subtrees of runs of the leaves that follow
    (split at arbitrary points, as the parallel verifier's workers split the records), builds the
    same tree as appending each leaf, and passes by every cut with that cut's root."""
    n, start, splits, cuts = case
    items = leaves(n)
    by_leaf = Frontier.of(items[:start])
    by_subtree = Frontier(by_leaf.size, by_leaf.nodes)
    roots_at_cuts = {}
    bounds = sorted({start, n, *(s for s in splits if s > start)})
    for first, end in zip(bounds, bounds[1:]):
        for node, height in subtree_roots(items[first:end], first, cuts):
            by_subtree.append_subtree(node, height)
            roots_at_cuts[by_subtree.size] = by_subtree.root()
        assert by_subtree.size == end
    for leaf in items[start:]:
        by_leaf.append(leaf)
    assert by_subtree.size == by_leaf.size == n
    assert by_subtree.nodes == by_leaf.nodes
    assert by_subtree.root() == (reference_root(items) if n else EMPTY_ROOT)
    for cut in cuts:
        if start < cut <= n:
            assert roots_at_cuts[cut] == reference_root(items[:cut])


def test_a_subtree_is_refused_where_it_would_not_start_at_a_multiple_of_its_size():
    frontier = Frontier.of(leaves(3))
    with pytest.raises(AssertionError):
        frontier.append_subtree(leaf_hash(b"x"), 1)
    assert frontier.size == 3 and frontier.root() == reference_root(leaves(3))
