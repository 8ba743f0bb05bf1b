"""Session splits: no session in two splits, every class and size in val, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from data.size_buckets import BUCKETS, size_bucket, size_buckets
from data.splits import split_sessions

CLASSES = ["face", "person", "license_plate", "vehicle"]


def random_sessions(n: int, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    strata, images = {}, {}
    for i in range(n):
        session = f"drive-{i:03d}"
        images[session] = int(rng.integers(5, 40))
        strata[session] = {
            (c, b): int(rng.integers(0, 3)) for c in CLASSES for b in BUCKETS if rng.random() < 0.4
        }
    return strata, images


def test_size_buckets_follow_the_coco_like_bounds() -> None:
    areas = np.array([0, 255.9, 256, 1023, 1024, 9215, 9216, 1e9])
    expected = ["tiny", "tiny", "small", "small", "medium", "medium", "large", "large"]
    assert [size_bucket(a) for a in areas] == expected
    assert size_buckets(areas).tolist() == expected


@pytest.mark.parametrize("seed", range(5))
def test_split_is_by_session_stratified_and_near_the_ratio(seed: int) -> None:
    strata, images = random_sessions(40, seed)
    split = split_sessions(strata, images, val_ratio=0.2, seed=seed)
    assert not set(split.train) & set(split.val)
    assert set(split.train) | set(split.val) == set(images)
    everywhere = {st for c in strata.values() for st, n in c.items() if n}
    in_val = {st for s in split.val for st, n in strata[s].items() if n}
    in_train = {st for s in split.train for st, n in strata[s].items() if n}
    multi = {st for st in everywhere if sum(1 for c in strata.values() if c.get(st)) >= 2}
    assert multi <= in_val  # every stratum that two sessions share reaches val
    assert in_train == everywhere  # and train keeps every stratum
    assert set(split.missing_in_val) == everywhere - in_val
    share = sum(images[s] for s in split.val) / sum(images.values())
    assert 0.1 <= share <= 0.4


def test_split_is_deterministic_by_seed() -> None:
    strata, images = random_sessions(30, 1)
    a = split_sessions(strata, images, val_ratio=0.25, seed=7)
    assert a == split_sessions(strata, images, val_ratio=0.25, seed=7)
    others = {tuple(split_sessions(strata, images, val_ratio=0.25, seed=s).val) for s in range(8)}
    assert len(others) > 1


def test_a_stratum_of_one_session_stays_in_train_and_is_reported() -> None:
    strata = {
        "a": {("face", "tiny"): 3, ("person", "large"): 1},
        "b": {("person", "large"): 2},
        "c": {("person", "large"): 1},
    }
    images = {"a": 10, "b": 10, "c": 10}
    split = split_sessions(strata, images, val_ratio=0.3, seed=0)
    assert "a" in split.train
    assert split.missing_in_val == [("face", "tiny")]
    assert ("person", "large") not in split.missing_in_val


def test_no_val_when_the_ratio_is_zero() -> None:
    strata, images = random_sessions(5, 0)
    split = split_sessions(strata, images, val_ratio=0.0, seed=0)
    assert split.val == [] and split.train == sorted(images)
    with pytest.raises(ValueError, match="val_ratio"):
        split_sessions(strata, images, val_ratio=1.0, seed=0)
