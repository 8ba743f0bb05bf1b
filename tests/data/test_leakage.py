"""Leakage: identical and near-identical images shared by train and a reference set."""

from __future__ import annotations

from data.leakage import Leak, find_leaks


def test_identical_and_near_duplicate_images_are_leaks_and_others_are_not() -> None:
    base = 0x0F0F_F0F0_1234_5678
    train = {"t-same": base, "t-near": base ^ 0b1011, "t-far": ~base & (2**64 - 1)}
    references = {
        "city": {"t-same": base},  # the same image (same sha256) in both
        "highway": {"r-other": base ^ (2**64 - 1) ^ 0b1},  # far from all but t-far
    }
    leaks = find_leaks(train, references, max_hamming=4)
    assert Leak("city", "t-same", "t-same", "identical", 0) in leaks
    assert Leak("city", "t-near", "t-same", "near_duplicate", 3) in leaks
    assert Leak("highway", "t-far", "r-other", "near_duplicate", 1) in leaks
    assert len(leaks) == 3


def test_no_leak_between_distinct_images_and_empty_sets() -> None:
    train = {f"t{i}": (0x9E3779B97F4A7C15 * (i + 1)) % 2**64 for i in range(50)}
    refs = {"r": {f"r{i}": (0xBF58476D1CE4E5B9 * (i + 3)) % 2**64 for i in range(50)}}
    assert find_leaks(train, refs, max_hamming=2) == []
    assert find_leaks({}, refs, max_hamming=6) == []
    assert find_leaks(train, {"empty": {}}, max_hamming=6) == []
